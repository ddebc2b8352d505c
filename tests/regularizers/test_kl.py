"""OutputKL: zero against an identical model, the KL's value, the adapters-off reference."""

import keras
import numpy as np
import pytest

from kft import freeze
from kft import peft
from kft import unfreeze
from kft.errors import KftError
from kft.regularizers import OutputKL
from kft.regularizers import Regularized
from kft.regularizers.kl import output_kind
from tests.helpers.peft_models import image_head_model
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import token_batch
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data


def _images(n=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 8, 8, 3)).astype("float32")


def test_kl_to_an_identical_model_is_zero_and_then_the_kl_of_the_outputs():
    model = tiny_classifier()
    x, _ = tiny_data(8)
    kl = OutputKL(model, weight=2.0)
    assert kl.reference_kind == "copy" and kl.output_kind == "softmax"
    assert kl.reference_arrays()  # a copy's weights, for a resumed run
    np.testing.assert_allclose(kl.penalty(x, model(x)), 0.0, atol=1e-6)
    p = model(x).numpy()
    for variable in model.trainable_variables:
        variable.assign(variable.numpy() * 1.5)
    q = model(x).numpy()
    expected = 2.0 * np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=-1))
    np.testing.assert_allclose(kl.penalty(x, model(x)), expected, rtol=1e-4)
    # A zero sample weight leaves its example out of the mean.
    weights = np.array([1, 0, 1, 1, 0, 1, 1, 1], "float32")
    per_example = np.sum(p * (np.log(p) - np.log(q)), axis=-1)
    np.testing.assert_allclose(kl.penalty(x, model(x), sample_weight=weights),
                               2.0 * per_example[weights > 0].mean(), rtol=1e-4)


def test_a_lora_model_is_its_own_reference_with_the_adapters_off():
    model = image_head_model()
    peft.apply_lora(model, rank=2)
    kl = OutputKL(model, weight=1.0)
    assert kl.reference_kind == "adapters_off"
    assert kl.reference_arrays() == {}  # no second copy of the weights
    x = _images()
    base = model(x).numpy()
    randomize_adapters(model, seed=3)
    adapted = model(x).numpy()
    assert not np.allclose(base, adapted, atol=1e-4)
    np.testing.assert_allclose(kl._reference.outputs(x), base, atol=1e-6)
    expected = np.mean(np.sum(base * (np.log(base) - np.log(adapted)), axis=-1))
    np.testing.assert_allclose(kl.penalty(x, model(x)), expected, rtol=1e-4)
    # The model itself still runs with its adapter.
    np.testing.assert_allclose(model(x), adapted, atol=1e-6)


def test_lora_with_a_trained_head_needs_a_frozen_copy():
    model = image_head_model()
    peft.apply_lora(model, targets="head_hidden", rank=2, train_also="head_dense")
    assert OutputKL(model).reference_kind == "copy"
    with pytest.raises(KftError, match="needs kft LoRA layers"):
        OutputKL(tiny_classifier(), reference="adapters_off")


def _softmax_kl(p_logits, q_logits):
    log_p = p_logits - np.log(np.exp(p_logits).sum(-1, keepdims=True))
    log_q = q_logits - np.log(np.exp(q_logits).sum(-1, keepdims=True))
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)


def test_keras_hub_lora_classifier_is_compared_with_its_base_inside_fit():
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=32, dropout=0.0)
    model = keras_hub.models.BertTextClassifier(
        backbone=backbone, preprocessor=None, num_classes=2, dropout=0.0)
    features, labels = token_batch(8)
    base = model.predict(features, verbose=0)
    peft.apply_lora(model, targets="query|value|logits", rank=2)
    randomize_adapters(model, seed=3)
    adapted = model.predict(features, verbose=0)
    kl = OutputKL(model, weight=0.5)
    assert kl.reference_kind == "adapters_off" and kl.output_kind == "logits"
    trainer = Regularized(model, kl)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0), jit_compile=False,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = trainer.fit(features, labels, batch_size=8, epochs=1, verbose=0).history
    expected = 0.5 * _softmax_kl(base, adapted).mean()
    assert expected > 1e-3
    # Measured in the traced train step: the reference there is the base model.
    np.testing.assert_allclose(history["kl_penalty"][0], expected, rtol=1e-3)


@pytest.mark.parametrize("activation, units, kind", [
    ("softmax", 3, "softmax"), (None, 3, "logits"), ("sigmoid", 3, "sigmoid"),
    (None, 1, "sigmoid_logits"),
])
def test_output_kind_follows_the_output_layer(activation, units, kind):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(units, activation=activation)(inputs))
    assert output_kind(model) == kind


def test_sigmoid_outputs_are_compared_unit_by_unit():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="sigmoid")(inputs))
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    kl = OutputKL(model, weight=1.0)
    p = model(x).numpy()
    model.layers[-1].kernel.assign(model.layers[-1].kernel * -1.0)
    q = model(x).numpy()
    expected = np.mean(np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=-1))
    np.testing.assert_allclose(kl.penalty(x, model(x)), expected, rtol=1e-4)


def test_kl_trains_the_whole_model_and_logs_on_validation_too():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "all")
    x, y = tiny_data(16)
    trainer = Regularized(model, OutputKL(model, weight=0.1))
    trainer.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y)).history
    assert history["kl_penalty"][0] > 0.0 and history["val_kl_penalty"][0] > 0.0


def test_bad_settings():
    with pytest.raises(KftError, match="weight must be a number > 0"):
        OutputKL(weight=0.0)
    with pytest.raises(KftError, match="output must be one of auto, softmax"):
        OutputKL(output="probabilities")
    with pytest.raises(KftError, match="reference must be one of auto, adapters_off, copy"):
        OutputKL(reference="twin")
