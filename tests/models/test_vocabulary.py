"""kft.models.vocabulary: new single tokens, a grown embedding matrix, saving."""

import keras
import keras_hub
import numpy as np
import pytest

from kft.errors import KftError
from kft.models.weights import text_presets
from kft.models.vocabulary import add_tokens
from tests.helpers.text_models import VOCABULARY

PLAIN = ["the movie was great", "bad food and awful service"]


def _classifier(preset, sequence_length=16):
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        preset, sequence_length=sequence_length
    )
    return keras_hub.models.BertTextClassifier.from_preset(
        preset, num_classes=2, preprocessor=preprocessor
    )


def _ids(tokenizer, text):
    return keras.ops.convert_to_numpy(tokenizer(text)).tolist()


def _matrix(model):
    return keras.ops.convert_to_numpy(model.backbone.token_embedding.embeddings)


def _logits(model, texts):
    return keras.ops.convert_to_numpy(model(model.preprocessor(texts)))


def test_marker_and_plain_word_become_single_tokens(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    tokenizer = model.preprocessor.tokenizer
    text = "the [PROTEIN] was goodly"
    assert len(_ids(tokenizer, text)) == 7  # the [ [UNK] ] was good ##ly

    ids = add_tokens(model, ["[PROTEIN]", "goodly"])

    size = len(tokenizer.get_vocabulary())
    assert ids == {"[PROTEIN]": size - 2, "goodly": size - 1}
    the, was = tokenizer.token_to_id("the"), tokenizer.token_to_id("was")
    assert _ids(tokenizer, text) == [the, ids["[PROTEIN]"], was, ids["goodly"]]
    # A longer word starting with the new one keeps it whole as well.
    assert _ids(tokenizer, "goodlys") == [ids["goodly"], tokenizer.token_to_id("##s")]

    # A second call adds to the first; the earlier tokens stay whole.
    code = add_tokens(model, ["[CODE]"])["[CODE]"]
    assert code == size
    assert _ids(tokenizer, "[CODE] [PROTEIN]") == [code, ids["[PROTEIN]"]]

    # Special tokens match longest first and case-sensitively.
    il6 = add_tokens(model, ["IL-6", "IL-6R"])
    assert _ids(tokenizer, "IL-6R IL-6")[:2] == [il6["IL-6R"], il6["IL-6"]]
    assert il6["IL-6"] not in _ids(tokenizer, "il-6")


def test_matrix_grows_with_old_rows_unchanged_and_new_rows_the_mean(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    before = _matrix(model)

    add_tokens(model, ["[PROTEIN]", "[CODE]", "kinase"])

    after = _matrix(model)
    assert after.shape == (before.shape[0] + 3, before.shape[1])
    np.testing.assert_array_equal(after[: len(before)], before)
    for row in after[len(before):]:
        np.testing.assert_allclose(row, before.mean(axis=0), rtol=1e-6, atol=1e-7)
    assert model.backbone.get_config()["vocabulary_size"] == len(after)
    assert model.preprocessor.tokenizer.vocabulary_size() == len(after)


def test_pieces_init_averages_the_old_pieces_and_falls_back_to_the_mean(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    tokenizer = model.preprocessor.tokenizer
    before = _matrix(model)
    pieces = [tokenizer.token_to_id("good"), tokenizer.token_to_id("##ly")]

    ids = add_tokens(model, ["goodly", "[PROTEIN]", "kinase"], init="pieces")

    after = _matrix(model)
    np.testing.assert_allclose(after[ids["goodly"]], before[pieces].mean(axis=0), rtol=1e-6)
    # A marker's pieces are brackets; "kinase" was [UNK]: both start from the mean.
    for token in ("[PROTEIN]", "kinase"):
        np.testing.assert_allclose(after[ids[token]], before.mean(axis=0), rtol=1e-6, atol=1e-7)


def test_outputs_without_new_tokens_stay_and_traced_predict_sees_the_new_rows(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    model.jit_compile = False  # XLA would double the test's time and test nothing more
    before = model.predict(PLAIN, verbose=0)  # traces predict with the old matrix

    add_tokens(model, ["[PROTEIN]", "goodly"])

    # Same batch shape as before, so Keras reuses the traced function unless
    # add_tokens dropped it. predict tokenizes in tf.data (the TensorFlow
    # path), _logits eagerly (the Python path): both must see the new token.
    new = "the [PROTEIN] was goodly"
    after = model.predict([PLAIN[0], new], verbose=0)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    np.testing.assert_allclose(after[1], _logits(model, [new])[0], atol=1e-6)


def test_fit_trains_new_rows_and_a_saved_model_keeps_the_vocabulary(tiny_bert_dir, tmp_path):
    model = _classifier(tiny_bert_dir)
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # Tracing the train step costs ~12 s of CPU here; the traced path after
        # add_tokens is covered by the predict test above.
        run_eagerly=True,
    )
    ids = add_tokens(model, ["[PROTEIN]", "goodly"], init="pieces")
    initial = _matrix(model)

    texts = ["the [PROTEIN] was goodly", "awful [PROTEIN] service"]
    model.fit(texts, np.array([1, 0]), batch_size=2, epochs=1, verbose=0)

    trained = _matrix(model)
    for token_id in ids.values():
        assert not np.array_equal(trained[token_id], initial[token_id])

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    tokenizer = loaded.preprocessor.tokenizer
    assert tokenizer.get_vocabulary() == model.preprocessor.tokenizer.get_vocabulary()
    assert _ids(tokenizer, texts[0]) == _ids(model.preprocessor.tokenizer, texts[0])
    np.testing.assert_array_equal(_matrix(loaded), trained)
    np.testing.assert_allclose(_logits(loaded, texts + PLAIN), _logits(model, texts + PLAIN),
                               atol=1e-6)


def test_bad_tokens_raise_and_leave_the_model_unchanged(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    before = _matrix(model)
    cases = [
        (["movie"], "already in the vocabulary"),
        (["[PROTEIN]", "[PROTEIN]"], "given twice"),
        (["Kinase"], "add 'kinase'"),
        (["##ase"], "suffix piece"),
        ([""], "non-empty"),
        (["kinase"], "init='zeros'"),
    ]
    for tokens, message in cases:
        init = "zeros" if message.startswith("init") else "mean"
        with pytest.raises(KftError, match=message):
            add_tokens(model, tokens, init=init)

    np.testing.assert_array_equal(_matrix(model), before)
    assert model.preprocessor.tokenizer.vocabulary_size() == len(before)
    assert not model.preprocessor.tokenizer.special_tokens_in_strings


def test_a_marker_the_tokenizer_would_strip_accents_from_raises(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    model.preprocessor.tokenizer.strip_accents = True
    with pytest.raises(KftError, match="strips accents"):
        add_tokens(model, ["[CAFÉ]"])
    assert add_tokens(model, ["[CAFE]"])


def test_a_built_optimizer_raises_and_a_new_one_works(tiny_bert_dir):
    model = _classifier(tiny_bert_dir)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    with pytest.raises(KftError, match="compile again with a new optimizer"):
        add_tokens(model, ["kinase"])

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    assert add_tokens(model, ["kinase"]) == {"kinase": model.backbone.vocabulary_size - 1}


def test_distil_bert_classifier_grows_its_nested_token_embedding(tmp_path):
    tokenizer = keras_hub.models.DistilBertTokenizer(vocabulary=VOCABULARY, lowercase=True)
    backbone = keras_hub.models.DistilBertBackbone(
        vocabulary_size=len(VOCABULARY), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16,
    )
    model = keras_hub.models.DistilBertTextClassifier(
        backbone, num_classes=2,
        preprocessor=keras_hub.models.DistilBertTextClassifierPreprocessor(
            tokenizer, sequence_length=16),
    )
    text = ["the [PROTEIN] was good"]
    before = _logits(model, PLAIN)

    ids = add_tokens(model, ["[PROTEIN]"])

    assert _ids(tokenizer, text[0])[1] == ids["[PROTEIN]"] == len(VOCABULARY)
    assert _matrix(model).shape[0] == len(VOCABULARY) + 1
    np.testing.assert_allclose(_logits(model, PLAIN), before, atol=1e-6)
    path = tmp_path / "distil_bert.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(_logits(loaded, text), _logits(model, text), atol=1e-6)


def test_byte_pair_tokenizer_is_not_supported():
    vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "a": 5, "b": 6,
                  "ab": 7}
    tokenizer = keras_hub.models.RobertaTokenizer(vocabulary=vocabulary, merges=["a b"])
    backbone = keras_hub.models.RobertaBackbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=1, hidden_dim=4,
        intermediate_dim=8, max_sequence_length=8,
    )
    preprocessor = keras_hub.models.RobertaTextClassifierPreprocessor(tokenizer, sequence_length=8)
    model = keras_hub.models.RobertaTextClassifier(backbone, 2, preprocessor=preprocessor)
    with pytest.raises(KftError, match="WordPiece.*RobertaTokenizer"):
        add_tokens(model, ["[PROTEIN]"])


def test_minilm_gets_domain_tokens_that_survive_saving(tmp_path):
    model = _classifier(text_presets.resolve("minilm"), sequence_length=32)
    tokenizer = model.preprocessor.tokenizer
    rows = _matrix(model).shape[0]
    assert rows == tokenizer.vocabulary_size()
    text = "[PROTEIN] phosphorylation by the kinase"
    old_pieces = _ids(tokenizer, "phosphorylation")
    assert len(old_pieces) > 1 and len(_ids(tokenizer, "[PROTEIN]")) == 3
    before = _matrix(model)

    ids = add_tokens(model, ["[PROTEIN]", "phosphorylation"], init="pieces")

    assert ids == {"[PROTEIN]": rows, "phosphorylation": rows + 1}
    assert _ids(tokenizer, text)[:2] == [rows, rows + 1]
    after = _matrix(model)
    assert after.shape == (rows + 2, before.shape[1])
    np.testing.assert_array_equal(after[:rows], before)
    np.testing.assert_allclose(after[rows + 1], before[old_pieces].mean(axis=0), rtol=1e-5)

    path = tmp_path / "minilm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert _ids(loaded.preprocessor.tokenizer, text) == _ids(tokenizer, text)
    np.testing.assert_allclose(_logits(loaded, [text]), _logits(model, [text]), atol=1e-6)
