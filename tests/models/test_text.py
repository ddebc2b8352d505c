"""kft.text.text_classifier on a tiny random keras-hub BERT: the mechanics."""

import keras
import numpy as np
import pytest

import kft
from kft.errors import KftError
from kft.models import text
from kft.models.weights import text_presets

TEXTS = np.array(["the movie was good", "a terrible , boring film", "i loved it !", "bad"])


def _weights(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def test_raw_strings_in_probabilities_out(tiny_bert_dir):
    model = text.text_classifier(tiny_bert_dir, num_classes=3, sequence_length=12)
    probabilities = model.predict(TEXTS, verbose=0)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    labels = text.predict_labels(model, TEXTS, ["a", "b", "c"])
    assert len(labels) == 4 and set(labels) <= {"a", "b", "c"}


def test_multi_label_outputs_independent_sigmoids(tiny_bert_dir):
    model = text.text_classifier(tiny_bert_dir, num_classes=3, multi_label=True,
                                 sequence_length=12)
    probabilities = model.predict(TEXTS, verbose=0)
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert not np.allclose(probabilities.sum(axis=-1), 1.0)
    assert text.loss_for(multi_label=True) == "binary_crossentropy"
    assert all(isinstance(labels, list) for labels in text.predict_labels(
        model, TEXTS, ["a", "b", "c"]))


def test_head_is_the_last_group_and_trains_alone(tiny_bert_dir):
    model = text.text_classifier(tiny_bert_dir, num_classes=2, sequence_length=12)
    groups = kft.layer_groups(model)
    assert [g.name for g in groups] == [
        "embeddings", "transformer_layer_0", "transformer_layer_1", "pooler", "head"]
    assert {layer.name for layer in groups[-1].layers} == {"classifier_dropout", "logits"}

    kft.freeze(model)
    kft.unfreeze(model, "head")
    assert sorted(v.path for v in model.trainable_variables) == ["logits/bias", "logits/kernel"]
    before = _weights(model)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy",
                  jit_compile=False)
    model.fit(TEXTS, np.array([1, 0, 1, 0]), epochs=2, verbose=0)
    changed = {p for p, w in _weights(model).items() if not np.array_equal(w, before[p])}
    assert changed == {"logits/bias", "logits/kernel"}


def test_adapters_selection_trains_lora_and_not_its_base(tiny_bert_dir):
    model = text.text_classifier(tiny_bert_dir, num_classes=2, sequence_length=12)
    kft.peft.apply_lora(model, rank=2)
    kft.freeze(model)
    kft.unfreeze(model, "adapters,head")
    trainable = {v.path for v in model.trainable_variables}
    assert trainable and all("lora_" in p or p.startswith("logits/") for p in trainable)
    assert len([p for p in trainable if "lora_a" in p]) == 4  # 2 layers x (query, value)

    before = _weights(model)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  jit_compile=False)
    model.fit(TEXTS, np.array([1, 0, 1, 0]), epochs=2, verbose=0)
    changed = {p for p, w in _weights(model).items() if not np.array_equal(w, before[p])}
    assert changed == trainable


def test_saved_classifier_reloads_and_takes_raw_strings(tiny_bert_dir, tmp_path):
    model = text.text_classifier(tiny_bert_dir, num_classes=2, sequence_length=12)
    kft.peft.apply_lora(model, rank=2, train_also=["logits"])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  jit_compile=False)
    model.fit(TEXTS, np.array([1, 0, 1, 0]), epochs=1, verbose=0)
    expected = model.predict(TEXTS, verbose=0)
    model.save(tmp_path / "model.keras")

    reloaded = kft.peft.load_model(tmp_path / "model.keras", train_also=["logits"])
    np.testing.assert_allclose(reloaded.predict(TEXTS, verbose=0), expected, atol=1e-6)
    assert len(kft.peft.lora_layers(reloaded)) == 4
    # The tokenizer's vocabulary came back with the model.
    assert reloaded.preprocessor.tokenizer.vocabulary_size() == \
        model.preprocessor.tokenizer.vocabulary_size()


def test_plain_classifier_reloads_with_keras(tiny_bert_dir, tmp_path):
    model = text.text_classifier(tiny_bert_dir, num_classes=2, sequence_length=12)
    expected = model.predict(TEXTS, verbose=0)
    model.save(tmp_path / "model.keras")
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded.predict(TEXTS, verbose=0), expected, atol=1e-6)


def test_random_init_differs_from_pretrained(tiny_bert_dir):
    pretrained = text.text_classifier(tiny_bert_dir, 2, sequence_length=12)
    random = text.text_classifier(tiny_bert_dir, 2, sequence_length=12, load_weights=False)
    embedding = pretrained.backbone.token_embedding.embeddings.path
    assert embedding == random.backbone.token_embedding.embeddings.path
    assert not np.array_equal(_weights(pretrained)[embedding], _weights(random)[embedding])


def test_short_names_and_bad_paths(tmp_path):
    assert text_presets.resolve("bert_base_en_uncased") == "bert_base_en_uncased"
    assert text_presets.resolve(str(tmp_path)) == str(tmp_path)
    with pytest.raises(KftError, match="does not exist"):
        text_presets.resolve(str(tmp_path / "missing" / "model"))
    with pytest.raises(KftError, match="Could not build a text classifier"):
        text.text_classifier(str(tmp_path), 2)
    with pytest.raises(KftError, match="num_classes"):
        text.text_classifier("minilm", 0)
