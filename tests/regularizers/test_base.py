"""Regularized: Keras' own fit with the penalty added; the model saves without it."""

import keras
import numpy as np
import pytest

from kft import freeze
from kft import saving
from kft import unfreeze
from kft.errors import KftError
from kft.regularizers import L2SP
from kft.regularizers import OutputKL
from kft.regularizers import Regularized
from kft.regularizers.base import masked_mean
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data


def test_the_trained_model_saves_and_reloads_without_the_regularizer(tmp_path):
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "all")
    x, y = tiny_data(16)
    trainer = Regularized(model, OutputKL(model, weight=0.1))
    trainer.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert set(history) == {"loss", "accuracy", "kl_penalty"}
    # The wrapper saves the model it trains; a fresh load needs no regulariser.
    trainer.save(tmp_path / "tuned.keras")
    reloaded = keras.saving.load_model(tmp_path / "tuned.keras", compile=False)
    assert reloaded.name == model.name
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    trainer.save_weights(tmp_path / "tuned.weights.h5")
    copy = tiny_classifier()
    copy.load_weights(tmp_path / "tuned.weights.h5")
    np.testing.assert_allclose(copy.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_the_checkpoint_of_a_regularized_fit_resumes_with_its_optimizer(tmp_path):
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "head,name:conv3")
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    trainer = Regularized(model, L2SP(model, alpha=0.1))
    from kft.training.feature_cache import compile_head

    compile_head(trainer, model)  # the model's loss, sharing its optimizer
    x, y = tiny_data(16)
    trainer.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "last.keras")
    reloaded = saving.load_model(tmp_path / "last.keras")
    assert int(reloaded.optimizer.iterations) == 2
    for saved, trained in zip(reloaded.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(saved, trained)


def test_a_penalty_gets_into_the_loss_only_in_training():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "head")
    regularizer = L2SP(model, alpha=0.1, beta=1.0)
    trainer = Regularized(model, regularizer)
    trainer.compile(loss="sparse_categorical_crossentropy")
    x, y = tiny_data(8)
    outputs = trainer(x, training=False)
    task = trainer.compute_loss(x, y, outputs, training=False)
    total = trainer.compute_loss(x, y, outputs, training=True)
    np.testing.assert_allclose(total - task, regularizer.penalty(x, outputs), rtol=1e-5)


def test_masked_mean_leaves_out_zero_weights_and_broadcasts():
    values = np.array([[1.0, 3.0], [5.0, 7.0]], "float32")
    np.testing.assert_allclose(masked_mean(values, None), 4.0)
    np.testing.assert_allclose(masked_mean(values, np.array([[1, 0], [0.5, 0]])), 3.0)
    np.testing.assert_allclose(masked_mean(values, np.array([0.0, 2.0])), 6.0)
    np.testing.assert_allclose(masked_mean(values, np.zeros((2, 2))), 0.0)


def test_only_regularizers_are_accepted():
    with pytest.raises(KftError, match="needs a kft.regularizers object"):
        Regularized(tiny_classifier(), "l2sp:0.1")
    with pytest.raises(KftError, match="needs a built Keras model"):
        L2SP(keras.Sequential([keras.layers.Dense(2)]))
