"""Feature caching: same head as training through the frozen model; refusals."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft.errors import KftError
from kft.training.feature_cache import cache_features
from kft.training.feature_cache import can_cache
from kft.training.feature_cache import compile_head
from kft.training.feature_cache import split_at_head
from kft.freezing import freeze
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data
from tests.helpers.tiny_models import values
from tests.helpers.tiny_models import with_head


def _dataset(n=48, batch_size=8):
    x, y = tiny_data(n)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


def _frozen_backbone_model(**kwargs):
    model = tiny_classifier(**kwargs)
    freeze(model, "name:^backbone$")
    return model


def test_head_trained_on_cached_features_equals_head_trained_through_the_model():
    model = _frozen_backbone_model(head_dropout=0.3)
    dense, dropout = model.get_layer("head_dense"), model.get_layer("head_dropout")
    start_weights = [w.numpy() for w in dense.weights]
    start_seed = dropout.seed_generator.state.numpy()
    ds = _dataset()

    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    before = values(model)
    model.fit(ds, epochs=3, verbose=0, shuffle=False)
    through_model = values(model)

    for weight, value in zip(dense.weights, start_weights):
        weight.assign(value)
    dropout.seed_generator.state.assign(start_seed)
    features, head = split_at_head(model)
    head.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    head.fit(cache_features(features, ds), epochs=3, verbose=0, shuffle=False)
    through_cache = values(model)

    # The head moved (and moved the same way); the backbone and its BatchNorm
    # statistics never did.
    assert not np.array_equal(before["head_dense/kernel"], through_cache["head_dense/kernel"])
    for path in ("head_dense/kernel", "head_dense/bias"):
        np.testing.assert_allclose(through_cache[path], through_model[path], rtol=1e-5, atol=1e-6)
    for path in before:
        if not path.startswith("head_"):
            np.testing.assert_array_equal(through_cache[path], before[path])
    x, _ = tiny_data(8)
    np.testing.assert_allclose(
        model.predict(x, verbose=0), head.predict(features.predict(x, verbose=0), verbose=0),
        rtol=1e-6,
    )


def test_compile_head_shares_the_optimizer_loss_and_metrics():
    model = _frozen_backbone_model()
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    ds = _dataset(16)
    model.fit(ds, epochs=1, verbose=0, shuffle=False)
    features, head = split_at_head(model)
    compile_head(head, model)
    assert head.optimizer is model.optimizer
    history = head.fit(cache_features(features, ds), epochs=1, verbose=0, shuffle=False)
    assert set(history.history) == {"loss", "accuracy"}
    # Two steps through the model, two on cached features: one step count.
    assert int(model.optimizer.iterations.numpy()) == 4
    with pytest.raises(KftError, match="not compiled"):
        compile_head(head, _frozen_backbone_model())


def test_split_shares_head_layers_and_pools_into_the_features():
    model = _frozen_backbone_model()
    features, head = split_at_head(model)
    assert head.get_layer("head_dense") is model.get_layer("head_dense")
    assert "head_pool" in [l.name for l in features.layers]
    assert "head_pool" not in [l.name for l in head.layers]
    assert tuple(features.output.shape) == (None, 4)


def test_can_cache_a_frozen_deterministic_backbone():
    ok, reason = can_cache(_frozen_backbone_model(head_dropout=0.5))
    assert ok, reason
    assert "(None, 4)" in reason


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: _frozen_backbone_model(augment=True), "augment/random_flip"),
        (lambda: _frozen_backbone_model(backbone_dropout=0.2), "backbone/drop2 (Dropout)"),
        (lambda: tiny_classifier(), "below the head is trainable"),
        (lambda: _train_bn_model(), "BatchNormalization layer backbone/bn0"),
    ],
)
def test_can_cache_refuses_with_the_reason(build, fragment):
    ok, reason = can_cache(build())
    assert not ok
    assert fragment in reason


@pytest.mark.parametrize("build, ok_with_random", [
    (lambda: _frozen_backbone_model(augment=True), True),
    (lambda: _frozen_backbone_model(backbone_dropout=0.2), True),
    (lambda: tiny_classifier(), False),
    (lambda: _train_bn_model(), False),
])
def test_allow_random_overlooks_only_randomness(build, ok_with_random):
    assert can_cache(build(), allow_random=True)[0] is ok_with_random


def _train_bn_model():
    model = tiny_classifier()
    freeze(model, "name:^backbone$", train_bn=True)
    return model


def test_no_head_is_a_refusal_and_an_error():
    backbone = tiny_classifier().get_layer("backbone")
    ok, reason = can_cache(backbone)
    assert not ok and "has no head" in reason
    with pytest.raises(KftError, match=r"has no head .*conv0"):
        split_at_head(backbone)


def test_stochastic_depth_in_efficientnet_prevents_caching():
    efficientnet = with_head(
        keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3))
    )
    freeze(efficientnet, "name:^backbone$")
    ok, reason = can_cache(efficientnet)
    assert not ok and "backbone/block2b_drop (Dropout)" in reason
    mobilenet = with_head(
        keras.applications.MobileNetV3Small(
            weights=None, include_top=False, input_shape=(32, 32, 3)
        )
    )
    freeze(mobilenet, "name:^backbone$")
    assert can_cache(mobilenet)[0]


def test_cache_keeps_order_and_batches_and_shuffles_when_asked():
    model = _frozen_backbone_model()
    features, _ = split_at_head(model)
    x, y = tiny_data(20)
    weights = np.linspace(0.1, 2.0, 20).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(8)
    cached = list(cache_features(features, ds).as_numpy_iterator())
    assert [len(b[1]) for b in cached] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in cached]), y)
    np.testing.assert_array_equal(np.concatenate([b[2] for b in cached]), weights)
    np.testing.assert_allclose(
        np.concatenate([b[0] for b in cached]), features.predict(x, verbose=0), rtol=1e-6
    )

    shuffled = cache_features(features, ds, shuffle=True, seed=1)
    epoch1 = np.concatenate([b[2] for b in shuffled.as_numpy_iterator()])
    epoch2 = np.concatenate([b[2] for b in shuffled.as_numpy_iterator()])
    np.testing.assert_array_equal(np.sort(epoch1), np.sort(weights))
    assert not np.array_equal(epoch1, weights) and not np.array_equal(epoch1, epoch2)


def test_cache_rejects_bad_input():
    features, _ = split_at_head(_frozen_backbone_model())
    with pytest.raises(KftError, match="empty dataset"):
        cache_features(features, _dataset().take(0))
    x, _ = tiny_data(8)
    with pytest.raises(KftError, match=r"batches of \(images, labels\)"):
        cache_features(features, tf.data.Dataset.from_tensor_slices(x).batch(4))
