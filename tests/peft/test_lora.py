"""kft.peft LoRA on whole models: targets, freezing, merge, named adapters."""

import keras
import numpy as np
import pytest

from kft import peft
from kft.errors import KftError
from kft.layers import AdapterSpec
from kft.layers import LoRADense
from kft.layers import LoRAEinsumDense
from tests.helpers.peft_models import BERT_LAYERS
from tests.helpers.peft_models import changed
from tests.helpers.peft_models import compile_for_logits
from tests.helpers.peft_models import image_head_model
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import snapshot
from tests.helpers.peft_models import token_batch
from tests.helpers.peft_models import tiny_bert

def test_default_targets_on_keras_hub_are_query_and_value():
    model = tiny_bert()
    features, _ = token_batch()
    before = model.predict(features, verbose=0)
    counts = peft.apply_lora(model, rank=4, alpha=8, train_also=["logits"])
    assert [p for p, _ in peft.lora_layers(model)] == BERT_LAYERS
    assert all(type(l) is LoRAEinsumDense for _, l in peft.lora_layers(model))
    # 4 layers x (32*4 + 4*32) + logits (32*2 + 2).
    assert counts.trainable == 4 * 256 + 66
    assert counts.total == sum(int(np.prod(v.shape)) for v in model.weights)
    assert "trainable params: 1,090" in str(counts)
    np.testing.assert_allclose(model.predict(features, verbose=0), before, atol=1e-6)


def test_one_adapter_spec_travels_instead_of_the_keywords():
    spec = AdapterSpec(rank=4, alpha=8, rslora=True)
    model = tiny_bert()
    peft.apply_lora(model, spec=spec, train_also=["logits"])
    assert {layer.adapter_spec("default") for _, layer in peft.lora_layers(model)} == {spec}
    peft.add_adapter(model, "second", spec=spec.get_config())
    assert {layer.adapter_spec("second") for _, layer in peft.lora_layers(model)} == {spec}
    with pytest.raises(KftError, match="either as spec= or as keywords.*rank"):
        peft.add_adapter(tiny_bert(), "x", spec=spec, rank=2)


def test_fit_changes_only_adapters_and_train_also():
    model = tiny_bert()
    features, labels = token_batch()
    peft.apply_lora(model, rank=4, alpha=8, dropout=0.1, train_also=["logits"])
    before = snapshot(model)
    compile_for_logits(model, graph=True)
    model.fit(features, labels, epochs=2, batch_size=8, verbose=0)
    adapter_paths = {
        v.path for _, l in peft.lora_layers(model) for v in l.adapter_variables("default").values()
    }
    assert changed(model, before) == adapter_paths | {"logits/kernel", "logits/bias"}


def test_default_targets_elsewhere_are_the_head_dense_layers():
    model = image_head_model()
    peft.apply_lora(model, rank=2)
    assert [p for p, _ in peft.lora_layers(model)] == ["head_hidden", "head_dense"]
    assert model.get_layer("backbone").get_layer("bn").trainable is False
    assert {v.name for v in model.trainable_weights} == {
        "lora_a_default", "lora_b_default"
    }


def test_targets_by_regex_and_suffix_in_nested_models():
    model = image_head_model()
    inner = keras.Input((8, 8, 3))
    wrapper = keras.Model(inner, model(inner), name="wrapper")
    peft.apply_lora(wrapper, targets=r"vision/head_.*", rank=2)
    assert [p for p, _ in peft.lora_layers(wrapper)] == ["vision/head_hidden", "vision/head_dense"]
    model2 = tiny_bert()
    peft.apply_lora(model2, targets=["value", "feedforward_output_dense"], rank=2)
    assert [p for p, _ in peft.lora_layers(model2)] == [
        "bert/transformer_layer_0/self_attention_layer/value",
        "bert/transformer_layer_0/feedforward_output_dense",
        "bert/transformer_layer_1/self_attention_layer/value",
        "bert/transformer_layer_1/feedforward_output_dense",
    ]
    block = model2.backbone.get_layer("transformer_layer_0")
    assert type(block._feedforward_output_dense) is LoRADense


def test_pattern_matching_nothing_lists_candidate_paths():
    model = tiny_bert()
    with pytest.raises(KftError) as error:
        peft.apply_lora(model, targets=["qeury"])
    message = str(error.value)
    assert 'LoRA targets: select="name:qeury" matches nothing' in message
    assert "bert/transformer_layer_0/self_attention_layer/query (EinsumDense)" in message
    assert "logits (Dense)" in message


def test_non_projection_targets_are_refused():
    model = tiny_bert()
    with pytest.raises(KftError, match="embeddings_layer_norm \\(LayerNormalization\\)"):
        peft.apply_lora(model, targets=["embeddings_layer_norm"])
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="out")])
    with pytest.raises(KftError, match="no default LoRA targets"):
        peft.apply_lora(plain)


def test_merge_keeps_outputs_and_unload_gives_a_plain_model(tmp_path):
    model = tiny_bert()
    features, _ = token_batch()
    peft.apply_lora(model, rank=4, dora=True)
    randomize_adapters(model)
    # A traced predict function must not survive merging (it would add the
    # update twice).
    unmerged = model.predict(features, verbose=0)
    peft.merge(model)
    np.testing.assert_allclose(model.predict(features, verbose=0), unmerged, atol=1e-5)
    peft.unmerge(model)
    np.testing.assert_allclose(model.predict(features, verbose=0), unmerged, atol=1e-5)
    peft.merge(model, unload=True)
    assert not peft.lora_layers(model)
    query = model.backbone.get_layer("transformer_layer_0")._self_attention_layer._query_dense
    assert type(query) is keras.layers.EinsumDense
    np.testing.assert_allclose(model.predict(features, verbose=0), unmerged, atol=1e-5)
    model.save(tmp_path / "merged.keras")
    loaded = keras.models.load_model(tmp_path / "merged.keras")
    np.testing.assert_allclose(loaded.predict(features, verbose=0), unmerged, atol=1e-5)


def test_named_adapters_switch_and_delete():
    model = tiny_bert()
    features, labels = token_batch()
    base = model.predict(features, verbose=0)
    peft.apply_lora(model, rank=2, adapter_name="first")
    peft.add_adapter(model, "second", targets=["query", "key"], rank=3)
    assert sorted(peft.list_adapters(model)) == ["first", "second"]
    assert len(peft.list_adapters(model)["second"]["layers"]) == 4
    assert peft.active_adapter(model) == "first"
    randomize_adapters(model, "first", seed=1)
    randomize_adapters(model, "second", seed=2)
    first = model.predict(features, verbose=0)
    peft.set_adapter(model, "second")
    second = model.predict(features, verbose=0)
    assert not np.allclose(first, second, atol=1e-4)
    # Only the active adapter trains.
    assert {v.name for v in model.trainable_weights} == {"lora_a_second", "lora_b_second"}
    peft.set_adapter(model, None)
    np.testing.assert_allclose(model.predict(features, verbose=0), base, atol=1e-6)
    peft.set_adapter(model, "first")
    np.testing.assert_allclose(model.predict(features, verbose=0), first, atol=1e-6)
    peft.delete_adapter(model, "second")
    assert sorted(peft.list_adapters(model)) == ["first"]
    assert not [v for v in model.weights if "second" in v.name]
    with pytest.raises(KftError, match="no adapter 'second'; it has \\['first'\\]"):
        peft.set_adapter(model, "second")
    with pytest.raises(KftError, match="already exists"):
        peft.add_adapter(model, "first")


def test_combined_adapter_is_the_weighted_sum_of_updates():
    model = tiny_bert()
    features, _ = token_batch()
    peft.apply_lora(model, rank=2, alpha=4, adapter_name="a")
    peft.add_adapter(model, "b", rank=3, alpha=3, rslora=True)
    randomize_adapters(model, "a", seed=1)
    randomize_adapters(model, "b", seed=2)
    peft.combine_adapters(model, {"a": 0.7, "b": -0.4}, "mix")
    for _, layer in peft.lora_layers(model):
        expected = 0.7 * layer.delta_kernel("a") - 0.4 * layer.delta_kernel("b")
        np.testing.assert_allclose(layer.delta_kernel("mix"), expected, atol=1e-6)
        assert layer.adapter_spec("mix").rank == 5
    peft.set_adapter(model, "mix")
    model.predict(features, verbose=0)
    peft.add_adapter(model, "d", rank=2, dora=True)
    with pytest.raises(KftError, match="Cannot combine DoRA adapters"):
        peft.combine_adapters(model, {"a": 1.0, "d": 1.0}, "bad")


def test_without_adapters_runs_the_base_and_changes_nothing():
    import tensorflow as tf

    model = tiny_bert()
    features, _ = token_batch(4)
    base = model.predict(features, verbose=0)
    peft.apply_lora(model, rank=2)
    randomize_adapters(model, seed=1)
    adapted = model.predict(features, verbose=0)
    trainable = [v.path for v in model.trainable_variables]

    @tf.function
    def both(x):
        with peft.without_adapters(model):
            off = model(x, training=False)
        return off, model(x, training=False)

    off, on = both(features)
    np.testing.assert_allclose(off, base, atol=1e-5)
    np.testing.assert_allclose(on, adapted, atol=1e-5)
    with peft.without_adapters(model):
        with peft.without_adapters(model):
            pass
        np.testing.assert_allclose(model(features, training=False), base, atol=1e-5)
    np.testing.assert_allclose(model(features, training=False), adapted, atol=1e-5)
    assert [v.path for v in model.trainable_variables] == trainable
    assert peft.active_adapter(model) == "default"
    peft.merge(model)
    with pytest.raises(KftError, match="unmerge\\(model\\) first"):
        with peft.without_adapters(model):
            pass


def test_switching_while_merged_is_refused():
    model = tiny_bert()
    peft.apply_lora(model, rank=2, adapter_name="a")
    peft.add_adapter(model, "b", rank=2)
    peft.merge(model)
    with pytest.raises(KftError, match="unmerge\\(model\\) before switching"):
        peft.set_adapter(model, "b")
    peft.unmerge(model)
    peft.set_adapter(model, "b")


def test_lora_on_int8_keras_hub_backbone():
    model = tiny_bert()
    features, labels = token_batch()
    model.backbone.quantize("int8")  # QLoRA style: the new head stays float
    quantized = model.predict(features, verbose=0)
    peft.apply_lora(model, rank=2, train_also=["logits"])
    np.testing.assert_allclose(model.predict(features, verbose=0), quantized, atol=1e-6)
    before = snapshot(model)
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    moved = changed(model, before)
    assert {"logits/kernel", "logits/bias"} <= moved
    assert all("lora_" in p or p.startswith("logits/") for p in moved)
    with pytest.raises(KftError, match="merging would quantize"):
        peft.merge(model)


def test_bitfit_through_the_freezing_selectors():
    """BitFit (biases only) is kft.freezing's job; LoRA's freezing agrees with it."""
    from kft import freezing

    model = tiny_bert()
    features, labels = token_batch()
    freezing.freeze(model)
    freezing.unfreeze(model, select="biases")
    assert {v.name for v in model.trainable_weights} == {"bias", "beta"}
    before = snapshot(model)
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    moved = changed(model, before)
    assert moved and all(p.endswith(("/bias", "/beta")) for p in moved)

    # LoRA plus BitFit: the biases of the LoRA layers train next to the adapters.
    peft.apply_lora(model, rank=2)
    freezing.unfreeze(model, select="biases")
    names = {v.name for v in model.trainable_weights}
    assert names == {"bias", "beta", "lora_a_default", "lora_b_default"}
    query = dict(peft.lora_layers(model))[BERT_LAYERS[0]]
    assert query.bias.trainable and not query._kernel.trainable
