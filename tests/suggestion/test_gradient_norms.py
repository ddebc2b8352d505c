"""Relative gradient norms against the analytic gradient of softmax regression."""

import keras
import numpy as np
import pytest

from kft.freezing import freeze
from kft.freezing import layer_groups
from kft.suggestion import relative_gradient_norms


def test_the_head_groups_norm_is_the_analytic_one_averaged_over_batches():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(4, name="hidden")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(hidden)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype("float32")
    y = rng.integers(0, 3, 12)
    groups = layer_groups(model)
    assert [g.name for g in groups][-1] == "head"
    freeze(model)  # frozen layers still have their gradient measured
    norms = relative_gradient_norms(model, [(x[:6], y[:6]), (x[6:], y[6:])], groups)

    kernel, bias = (keras.ops.convert_to_numpy(v) for v in model.get_layer("head_dense").weights)
    h = keras.ops.convert_to_numpy(model.get_layer("hidden")(x))
    gradients = []
    for rows in (slice(0, 6), slice(6, 12)):
        logits = h[rows] @ kernel + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        error = (p - np.eye(3)[y[rows]]) / 6
        gradients.append((h[rows].T @ error, error.sum(0)))
    g_kernel = (gradients[0][0] + gradients[1][0]) / 2
    g_bias = (gradients[0][1] + gradients[1][1]) / 2
    expected = np.sqrt(np.sum(g_kernel**2) + np.sum(g_bias**2)) / np.sqrt(
        np.sum(kernel**2) + np.sum(bias**2))
    assert norms[-1] == pytest.approx(expected, rel=1e-4)
    assert norms[0] > 0
    # The model is as frozen as it was.
    assert model.trainable_weights == []
