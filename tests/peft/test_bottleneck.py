"""Bottleneck adapters in keras-hub transformer blocks."""

import keras
import numpy as np
import pytest

from kft import peft
from kft.errors import KftError
from kft.layers import BottleneckAdapter
from tests.helpers.peft_models import compile_for_logits
from tests.helpers.peft_models import snapshot
from tests.helpers.peft_models import tiny_bert
from tests.helpers.peft_models import token_batch


def test_adapters_go_after_attention_and_feedforward_and_start_as_identity():
    model = tiny_bert()
    features, _ = token_batch()
    before = model.predict(features, verbose=0)
    counts = peft.apply_bottleneck_adapters(model, bottleneck_dim=4, train_also=["logits"])
    adapters = [p for p, l in peft.layer_paths(model).items() if isinstance(l, BottleneckAdapter)]
    assert adapters == [
        f"bert/transformer_layer_{i}/{where}_adapter"
        for i in (0, 1) for where in ("attention", "feedforward")
    ]
    block = model.backbone.get_layer("transformer_layer_0")
    assert isinstance(block._self_attention_dropout, BottleneckAdapter)
    assert block._self_attention_dropout.input_dropout == 0.1  # BERT's dropout
    # 4 adapters x (32*4 + 4 + 4*32 + 32) + logits (32*2 + 2).
    assert counts.trainable == 4 * 292 + 66
    np.testing.assert_allclose(model.predict(features, verbose=0), before, atol=1e-6)


def test_fit_changes_only_the_adapters_and_the_head():
    model = tiny_bert()
    features, labels = token_batch()
    peft.apply_bottleneck_adapters(model, bottleneck_dim=4, train_also=["logits"])
    before = snapshot(model)
    compile_for_logits(model)
    model.fit(features, labels, epochs=2, batch_size=8, verbose=0)
    moved = {v.path for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}
    assert moved == {
        f"transformer_layer_{i}/{where}_adapter/{name}"
        for i in (0, 1)
        for where in ("attention", "feedforward")
        for name in ("down_kernel", "down_bias", "up_kernel", "up_bias")
    } | {"logits/kernel", "logits/bias"}


def test_adapter_layer_round_trip(tmp_path):
    inputs = keras.Input((5, 8))
    adapter = BottleneckAdapter(bottleneck_dim=3, activation="relu", dropout=0.1, name="adapter")
    model = keras.Model(inputs, adapter(inputs))
    adapter.up_kernel.assign(np.random.default_rng(0).normal(size=(3, 8)))
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype("float32")
    model.save(tmp_path / "adapter.keras")
    loaded = keras.models.load_model(tmp_path / "adapter.keras")
    assert loaded.get_layer("adapter").get_config() == adapter.get_config()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_models_without_transformer_blocks_are_refused():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(KftError, match="no keras-hub transformer blocks"):
        peft.apply_bottleneck_adapters(plain)
    model = tiny_bert()
    with pytest.raises(KftError, match="Unknown adapter positions \\['cross'\\]"):
        peft.apply_bottleneck_adapters(model, positions=("attention", "cross"))
    peft.apply_bottleneck_adapters(model, positions=("feedforward",))
    with pytest.raises(KftError, match="already have bottleneck adapters"):
        peft.apply_bottleneck_adapters(model, positions=("feedforward",))
