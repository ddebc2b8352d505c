"""L2-SP: exact gradients, frozen weights untouched, the penalty from zero."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft import freeze
from kft import peft
from kft import unfreeze
from kft.errors import KftError
from kft.regularizers import L2SP
from kft.regularizers import Regularized
from tests.helpers.peft_models import image_head_model
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data
from tests.helpers.tiny_models import values


def _top_block_and_head(model):
    freeze(model)
    unfreeze(model, "head,name:conv3")
    return model


def _compiled(model, regularizer, rate=0.1):
    trainer = Regularized(model, regularizer)
    trainer.compile(optimizer=keras.optimizers.SGD(rate), loss="sparse_categorical_crossentropy")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return trainer


def _gradients(model, loss_of):
    with tf.GradientTape() as tape:
        loss = loss_of()
    return dict(zip([v.path for v in model.trainable_variables],
                    tape.gradient(loss, model.trainable_variables)))


def _move(variables, seed=0):
    rng = np.random.default_rng(seed)
    for variable in variables:
        variable.assign(variable.numpy() + rng.normal(scale=0.1, size=variable.shape))


def test_gradient_is_alpha_times_the_distance_plus_beta_on_the_head():
    model = _top_block_and_head(tiny_classifier())
    regularizer = L2SP(model, alpha=0.3, beta=0.05)
    assert regularizer.pretrained_paths == ["conv3/kernel", "conv3/bias"]
    assert regularizer.head_paths == ["head_dense/kernel", "head_dense/bias"]
    start = values(model)
    _move(model.trainable_variables)
    trainer = _compiled(model, regularizer)
    x, y = tiny_data(8)

    def regularized():
        return trainer.compute_loss(x, y, trainer(x, training=True), training=True)

    def task():
        return model.compute_loss(x, y, model(x, training=True), training=True)

    total, plain = _gradients(model, regularized), _gradients(model, task)
    now = values(model)
    for path in total:
        expected = (0.05 * now[path] if path.startswith("head_")
                    else 0.3 * (now[path] - start[path]))
        np.testing.assert_allclose(total[path] - plain[path], expected, rtol=1e-4, atol=1e-6)
    # The value too: alpha/2 and beta/2 times the squared norms.
    pull = sum(np.sum((now[p] - start[p]) ** 2) for p in regularizer.pretrained_paths)
    size = sum(np.sum(now[p] ** 2) for p in regularizer.head_paths)
    np.testing.assert_allclose(regularizer.penalty(x, None), 0.15 * pull + 0.025 * size,
                               rtol=1e-5)


def test_frozen_weights_get_no_term_and_stay_bit_identical():
    model = _top_block_and_head(tiny_classifier())
    trainable = {v.path for v in model.trainable_variables}
    before = values(model)
    trainer = _compiled(model, L2SP(model, alpha=0.5, beta=0.1), rate=0.5)
    x, y = tiny_data(16)
    trainer.fit(x, y, batch_size=8, epochs=2, verbose=0)
    after = values(model)
    frozen = [path for path in before if path not in trainable]
    assert any("moving_mean" in path for path in frozen)
    for path in frozen:
        assert np.array_equal(before[path], after[path]), path
    assert all(not np.array_equal(before[path], after[path]) for path in trainable)


def test_the_penalty_is_zero_at_the_first_step_and_positive_after():
    model = _top_block_and_head(tiny_classifier())
    trainer = _compiled(model, L2SP(model, alpha=1.0))
    x, y = tiny_data(8)
    history = trainer.fit(x, y, batch_size=8, epochs=2, verbose=0).history
    assert history["l2sp_penalty"][0] == 0.0
    assert history["l2sp_penalty"][1] > 0.0
    # loss = task loss + penalty; val_loss is the task loss alone.
    history = trainer.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y)).history
    assert history["val_l2sp_penalty"][0] > 0.0
    task_loss = model.evaluate(x, y, verbose=0)
    np.testing.assert_allclose(history["val_loss"][0], task_loss, rtol=1e-5)


def test_head_none_pulls_every_trained_weight_and_a_selection_picks_the_head():
    model = _top_block_and_head(tiny_classifier())
    everything = L2SP(model, alpha=0.1, head=None)
    assert everything.head_paths == []
    assert "head_dense/kernel" in everything.pretrained_paths
    kernel_only = L2SP(model, alpha=0.1, beta=0.1, head="head_dense")
    assert kernel_only.head_paths == ["head_dense/kernel", "head_dense/bias"]


def test_lora_layers_are_pulled_on_their_kernel_not_their_factors():
    model = image_head_model()
    peft.apply_lora(model, rank=2, alpha=4.0)  # the head's Dense layers
    rng = np.random.default_rng(0)
    layers = dict(peft.lora_layers(model))
    start_delta = {}
    for path, layer in layers.items():
        layer.adapter_variables("default")["lora_b"].assign(
            rng.normal(scale=0.3, size=layer.adapter_variables("default")["lora_b"].shape))
        start_delta[path] = layer.delta_kernel().numpy()
    regularizer = L2SP(model, alpha=0.7, head=None)
    assert regularizer.pretrained_paths == [f"{p}:adapted_kernel" for p in layers]
    _move(model.trainable_variables, seed=1)
    grads = _gradients(model, lambda: regularizer.penalty(None, None))
    for path, layer in layers.items():
        factors = layer.adapter_variables("default")
        a, b = factors["lora_a"].numpy(), factors["lora_b"].numpy()
        scale = layer.adapter_spec("default").scaling
        residual = 0.7 * (scale * a @ b - start_delta[path])
        np.testing.assert_allclose(grads[factors["lora_a"].path], scale * residual @ b.T,
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(grads[factors["lora_b"].path], scale * a.T @ residual,
                                   rtol=1e-4, atol=1e-6)


def test_dora_is_pulled_on_its_effective_kernel():
    model = image_head_model()
    peft.apply_lora(model, targets="head_dense", rank=2, dora=True)
    layer = dict(peft.lora_layers(model))["head_dense"]
    regularizer = L2SP(model, alpha=1.0, head=None)
    np.testing.assert_allclose(regularizer.penalty(None, None), 0.0, atol=1e-10)
    _move(model.trainable_variables)
    factors = layer.adapter_variables("default")
    v = layer.kernel.numpy() + layer.delta_kernel().numpy()
    effective = factors["lora_magnitude"].numpy() * v / np.linalg.norm(v, axis=0)
    start = layer.kernel.numpy()  # B started at zero, m at ||W||
    np.testing.assert_allclose(regularizer.penalty(None, None),
                               0.5 * np.sum((effective - start) ** 2), rtol=1e-4)


def test_saved_start_weights_restore_the_same_penalty():
    model = _top_block_and_head(tiny_classifier())
    first = L2SP(model, alpha=0.2, beta=0.1)
    saved = first.reference_arrays()
    _move(model.trainable_variables)
    resumed = L2SP(alpha=0.2, beta=0.1).bind(model, reference=saved)
    np.testing.assert_allclose(resumed.penalty(None, None), first.penalty(None, None), rtol=1e-6)
    assert L2SP(alpha=0.2).bind(model).penalty(None, None) < first.penalty(None, None)
    unfreeze(model, "name:conv2")
    with pytest.raises(KftError, match="do not fit the model's trainable weights"):
        L2SP(alpha=0.2).bind(model, reference=saved)


@pytest.mark.parametrize("options, message", [
    ({"alpha": 0}, "alpha must be a number > 0"),
    ({"beta": -1.0}, "beta must be a number >= 0"),
])
def test_bad_settings(options, message):
    with pytest.raises(KftError, match=message):
        L2SP(**options)


def test_an_unbound_regularizer_says_how_to_bind_it():
    with pytest.raises(KftError, match=r"not bound to a model yet.*\.bind\(model\)"):
        Regularized(tiny_classifier(), L2SP(alpha=0.1))
