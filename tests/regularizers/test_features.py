"""FeatureDistance: the squared distance of the head's input to the pretrained one."""

import keras
import numpy as np
import pytest

from kft import freeze
from kft import peft
from kft import unfreeze
from kft.errors import KftError
from kft.regularizers import FeatureDistance
from kft.regularizers import Regularized
from tests.helpers.peft_models import image_head_model
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data
from tests.helpers.tiny_models import values


def _pooled(model, x):
    """The head's input, computed by hand: the pooled backbone output."""
    backbone = model.get_layer("backbone")
    return np.mean(backbone(model.get_layer("preprocess")(x)).numpy(), axis=(1, 2))


def test_the_penalty_is_the_mean_squared_distance_of_the_pooled_features():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "all")
    x, _ = tiny_data(8)
    distance = FeatureDistance(model, weight=0.5)
    assert distance.reference_kind == "copy"
    np.testing.assert_allclose(distance.penalty(x, model(x)), 0.0, atol=1e-8)
    start = _pooled(model, x)
    conv = model.get_layer("backbone").get_layer("conv3")
    conv.kernel.assign(conv.kernel * 1.7)
    now = _pooled(model, x)
    expected = 0.5 * np.mean(np.sum((now - start) ** 2, axis=-1))
    assert expected > 0
    outputs, features = distance.forward(model, x, training=False)
    np.testing.assert_allclose(outputs, model(x), atol=1e-6)
    np.testing.assert_allclose(features, now, atol=1e-5)
    np.testing.assert_allclose(distance.penalty(x, outputs, features), expected, rtol=1e-4)


def test_training_with_it_keeps_the_head_input_closer_to_the_pretrained_one():
    x, y = tiny_data(16)
    drift = {}
    for weight in (None, 50.0):
        model = tiny_classifier()
        freeze(model)
        unfreeze(model, "all")
        start = _pooled(model, x)
        if weight is None:
            trainer = model
        else:
            trainer = Regularized(model, FeatureDistance(model, weight=weight))
        trainer.compile(optimizer=keras.optimizers.Adam(0.05),
                        loss="sparse_categorical_crossentropy")
        history = trainer.fit(x, y, batch_size=8, epochs=3, verbose=0).history
        drift[weight] = np.mean(np.sum((_pooled(model, x) - start) ** 2, axis=-1))
    assert history["features_penalty"][-1] > 0
    assert drift[50.0] < drift[None] / 2


def test_a_lora_backbone_is_compared_with_its_adapters_off():
    model = image_head_model()
    peft.apply_lora(model, targets="head_hidden|head_dense", rank=2)
    distance = FeatureDistance(model, weight=1.0)
    assert distance.reference_kind == "adapters_off"
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    # LoRA in the head only: the head's input does not move.
    np.testing.assert_allclose(distance.penalty(x, model(x)), 0.0, atol=1e-10)


def test_a_model_without_a_head_is_refused():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(KftError, match="FeatureDistance needs the head's input features"):
        FeatureDistance(model)


def test_it_needs_the_model_it_is_bound_to_not_its_head():
    from kft.training.feature_cache import split_at_head

    model = tiny_classifier()
    head = split_at_head(model)[1]
    with pytest.raises(KftError, match="turn feature caching off"):
        Regularized(head, FeatureDistance(model))
    assert values(model)  # untouched
