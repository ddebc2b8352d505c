"""Adapter files: path-keyed weights, a small config, and refusal of other models."""

import json

import keras
import numpy as np
import pytest
from safetensors.numpy import load_file

from kft import peft
from kft.errors import KftError
from tests.helpers.peft_models import BERT_LAYERS
from tests.helpers.peft_models import compile_for_logits
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import tiny_bert
from tests.helpers.peft_models import token_batch


def trained_lora_model(tmp_path, **options):
    model = tiny_bert()
    features, labels = token_batch()
    peft.apply_lora(model, rank=4, alpha=8, train_also=["logits"], **options)
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    return model, features


@pytest.mark.parametrize("options", [{}, {"dora": True, "rslora": True}])
def test_adapter_round_trip_into_a_fresh_base(tmp_path, options):
    model, features = trained_lora_model(tmp_path, **options)
    tuned = model.predict(features, verbose=0)
    folder = peft.save_adapter(model, tmp_path / "adapter")

    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["method"] == ("dora" if options else "lora")
    assert (config["rank"], config["alpha"]) == (4, 8.0)
    assert list(config["targets"]) == BERT_LAYERS
    assert config["train_also"] == {"logits": ["kernel", "bias"]}
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    expected = {f"{p}/{k}" for p in BERT_LAYERS for k in ("lora_a", "lora_b")}
    if options:
        expected |= {f"{p}/lora_magnitude" for p in BERT_LAYERS}
    assert set(tensors) == expected | {"logits/kernel", "logits/bias"}

    fresh = tiny_bert()  # same seed: the same base weights
    counts = peft.load_adapter(fresh, folder)
    np.testing.assert_allclose(fresh.predict(features, verbose=0), tuned, atol=1e-5)
    assert counts.trainable == peft.count_parameters(model).trainable
    # It can keep training from there.
    compile_for_logits(fresh)
    fresh.fit(features, np.zeros(len(tuned), "int32"), epochs=1, verbose=0)


def test_adapter_from_another_checkpoint_is_refused(tmp_path):
    model, _ = trained_lora_model(tmp_path)
    folder = peft.save_adapter(model, tmp_path / "adapter")
    other = tiny_bert(seed=7)  # same architecture, other weights
    with pytest.raises(KftError, match="made for another model: the base weights"):
        peft.load_adapter(other, folder)
    assert not peft.lora_layers(other)  # nothing was changed
    peft.load_adapter(other, folder, strict=False)
    assert len(peft.lora_layers(other)) == 4


def test_adapter_for_another_architecture_is_refused(tmp_path):
    import keras_hub

    model, _ = trained_lora_model(tmp_path)
    folder = peft.save_adapter(model, tmp_path / "adapter")
    wider = keras_hub.models.BertTextClassifier(
        backbone=keras_hub.models.BertBackbone(
            vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=48,
            intermediate_dim=64, max_sequence_length=32, name="bert",
        ),
        preprocessor=None, num_classes=2,
    )
    with pytest.raises(KftError, match="shapes do not match") as error:
        peft.load_adapter(wider, folder)
    assert "lora_a: file (32, 4) vs model (48, 4)" in str(error.value)
    plain = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(2, name="logits")], name="plain"
    )
    with pytest.raises(KftError, match="has no layers \\['bert/transformer_layer_0"):
        peft.load_adapter(plain, folder)


def test_auto_numbered_names_of_a_second_instance_still_match(tmp_path):
    import keras_hub

    def unnamed():
        # Built without names: "bert_backbone", then "bert_backbone_1", ...
        return keras_hub.models.BertTextClassifier(
            backbone=keras_hub.models.BertBackbone(
                vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
                intermediate_dim=64, max_sequence_length=32,
            ),
            preprocessor=None, num_classes=2,
        )

    features, _ = token_batch()
    model, second = unnamed(), unnamed()
    second.set_weights(model.get_weights())
    assert model.backbone.name != second.backbone.name
    peft.apply_lora(model, rank=2)
    randomize_adapters(model)
    folder = peft.save_adapter(model, tmp_path / "adapter")
    peft.load_adapter(second, folder)
    np.testing.assert_allclose(
        second.predict(features, verbose=0), model.predict(features, verbose=0), atol=1e-5
    )


def test_bitfit_biases_travel_with_the_adapter(tmp_path):
    from kft import freezing

    model = tiny_bert()
    features, labels = token_batch()
    peft.apply_lora(model, rank=2, train_also=["logits"])
    freezing.unfreeze(model, select="biases")
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    folder = peft.save_adapter(model, tmp_path / "adapter")
    config = peft.read_adapter_config(folder)
    assert config["train_also"][BERT_LAYERS[0]] == ["bias"]
    assert config["train_also"]["bert/embeddings_layer_norm"] == ["gamma", "beta"]
    fresh = tiny_bert()
    peft.load_adapter(fresh, folder)
    np.testing.assert_allclose(
        fresh.predict(features, verbose=0), model.predict(features, verbose=0), atol=1e-5
    )
    query = dict(peft.lora_layers(fresh))[BERT_LAYERS[0]]
    assert query.bias.trainable and not query._kernel.trainable
    trainable = {v.path for v in fresh.trainable_weights}
    assert trainable == {v.path for v in model.trainable_weights}


def test_several_adapters_load_side_by_side(tmp_path):
    model = tiny_bert()
    features, _ = token_batch()
    peft.apply_lora(model, rank=2)
    randomize_adapters(model, seed=1)
    first = model.predict(features, verbose=0)
    peft.save_adapter(model, tmp_path / "first")
    randomize_adapters(model, seed=2)
    second = model.predict(features, verbose=0)
    peft.save_adapter(model, tmp_path / "second")
    fresh = tiny_bert()
    peft.load_adapter(fresh, tmp_path / "first", adapter_name="one")
    # The base fingerprint ignores the adapters already on the model.
    peft.load_adapter(fresh, tmp_path / "second", adapter_name="two")
    np.testing.assert_allclose(fresh.predict(features, verbose=0), second, atol=1e-5)
    peft.set_adapter(fresh, "one")
    np.testing.assert_allclose(fresh.predict(features, verbose=0), first, atol=1e-5)
    with pytest.raises(KftError, match="already has an adapter 'one'"):
        peft.load_adapter(fresh, tmp_path / "first", adapter_name="one")


def test_save_refuses_to_overwrite_and_to_save_merged(tmp_path):
    model, _ = trained_lora_model(tmp_path)
    peft.save_adapter(model, tmp_path / "adapter")
    with pytest.raises(KftError, match="already exists"):
        peft.save_adapter(model, tmp_path / "adapter")
    peft.save_adapter(model, tmp_path / "adapter", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
    peft.merge(model)
    with pytest.raises(KftError, match="unmerge\\(model\\) before save_adapter"):
        peft.save_adapter(model, tmp_path / "merged")
    with pytest.raises(KftError, match="not an adapter folder"):
        peft.load_adapter(tiny_bert(), tmp_path)


def test_adapter_on_an_int8_base(tmp_path):
    model = tiny_bert()
    features, labels = token_batch()
    # The LoRA targets in int8 (quantizing every layer is slow here).
    model.backbone.quantize("int8", filters="^(query|value)$")
    peft.apply_lora(model, rank=2, train_also=["logits"])
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    folder = peft.save_adapter(model, tmp_path / "adapter")
    fresh = tiny_bert()
    fresh.backbone.quantize("int8", filters="^(query|value)$")
    peft.load_adapter(fresh, folder)
    np.testing.assert_allclose(
        fresh.predict(features, verbose=0), model.predict(features, verbose=0), atol=1e-6
    )
    with pytest.raises(KftError, match="quantized vs float base"):
        peft.load_adapter(tiny_bert(), folder)
