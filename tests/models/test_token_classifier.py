"""Token classification on the tiny BERT preset: alignment, masking, saving, runner."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import kft
from kft.runs import runner
from kft.errors import KftError
from kft.models.token_classifier import predict_words, token_classifier
from kft.runs.recipe import load as load_recipe
from tests.helpers.process import REPO

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
# The tiny vocabulary splits "bobs" into "bob ##s"; "loved" is one piece.
SENTENCES = ["alice lives in paris", "bobs loved london", "bob works at acme in london"]
LABELS = [[3, 0, 0, 1], [3, 0, 1], [3, 0, 0, 0, 0, 1]]


@pytest.fixture(scope="module")
def model(tiny_bert_dir):
    """One model for the tests that only read it: tracing the tokenizer and
    the forward pass costs seconds, once per model."""
    keras.utils.set_random_seed(0)
    return token_classifier(tiny_bert_dir, TAGS, sequence_length=12)


def test_first_piece_carries_the_label_and_everything_else_is_ignored(model):
    x, labels = model.preprocessor(SENTENCES[:2], LABELS[:2])
    tokenizer = model.preprocessor.tokenizer
    pieces = [[tokenizer.id_to_token(int(i)) for i in row] for row in x["token_ids"].numpy()]
    assert pieces[1][:6] == ["[CLS]", "bob", "##s", "loved", "london", "[SEP]"]
    assert set(pieces[1][6:]) == {"[PAD]"}
    # Padded to the batch's longest (6 pieces), rounded up to 8, not to 12.
    np.testing.assert_array_equal(labels.numpy()[1], [-1, 3, -1, 0, 1] + [-1] * 3)
    np.testing.assert_array_equal(labels.numpy()[0], [-1, 3, 0, 0, 1] + [-1] * 3)
    np.testing.assert_array_equal(x["padding_mask"].numpy()[1], [1] * 6 + [0] * 2)
    # Lists of words align the same way as the joined string.
    words = [s.split() for s in SENTENCES[:2]]
    same_x, same_labels = model.preprocessor(words, np.array([[3, 0, 0, 1], [3, 0, 1, -1]]))
    np.testing.assert_array_equal(same_x["token_ids"], x["token_ids"])
    np.testing.assert_array_equal(same_labels, labels)


def test_words_the_tokenizer_drops_keep_a_position(model):
    # A zero-width space is a word to the whitespace split but no wordpiece.
    x, labels = model.preprocessor(["alice \u200b paris"], [[3, 0, 1]])
    unknown = model.preprocessor.tokenizer.token_to_id("[UNK]")
    assert x["token_ids"].numpy()[0][2] == unknown
    np.testing.assert_array_equal(labels.numpy()[0][:5], [-1, 3, 0, 1, -1])
    assert len(predict_words(model, ["alice \u200b paris"])[0]) == 3


def test_ignored_positions_do_not_change_the_loss(model):
    loss_function = model.loss  # The default compile's.
    x, labels = model.preprocessor(SENTENCES, LABELS)
    labels = labels.numpy()
    probabilities = model(x).numpy()
    loss = float(loss_function(labels, probabilities))
    ignored = labels < 0
    # The mean over words: positions labelled -1 count in neither sum nor count.
    chosen = np.take_along_axis(probabilities, np.maximum(labels, 0)[..., None], -1)[..., 0]
    assert loss == pytest.approx(-np.log(chosen[~ignored]).mean(), rel=1e-5)
    changed = probabilities.copy()
    changed[ignored] = np.random.default_rng(0).dirichlet(np.ones(len(TAGS)), ignored.sum())
    assert float(loss_function(labels, changed)) == pytest.approx(loss, rel=1e-6)
    changed[~ignored] = np.roll(changed[~ignored], 1, axis=-1)
    assert float(loss_function(labels, changed)) != pytest.approx(loss, rel=1e-3)


def test_predictions_map_back_to_one_tag_per_word(model):
    long = "alice lives in paris and bob lives in london and alice lives in paris"
    sentences = [long, "bobs", ["bob", "works", "at", "acme"]]
    tagged = predict_words(model, sentences, batch_size=2)
    assert [len(tags) for tags in tagged] == [14, 1, 4]
    assert all(tag in TAGS for tags in tagged for tag in tags)
    assert tagged[0][10:] == ["O"] * 4  # Past sequence_length: 10 words fit.
    x, _, positions = model.preprocessor.align(tf.constant([long]))
    probabilities = model(x).numpy()[0]
    first_pieces = positions.numpy()[0] >= 0
    expected = [TAGS[i] for i in probabilities[first_pieces].argmax(-1)]
    assert tagged[0][:10] == expected
    with pytest.raises(KftError, match="whitespace"):
        predict_words(model, [["new york"]])


def test_bad_tags_are_refused(tiny_bert_dir):
    with pytest.raises(KftError, match="layout"):
        token_classifier(tiny_bert_dir, ["B-PER", "O"])
    with pytest.raises(KftError, match="longer than"):
        token_classifier(tiny_bert_dir, TAGS, sequence_length=4096)


def test_head_is_the_last_layer_group(model):
    groups = kft.layer_groups(model)
    assert [g.name for g in groups][:3] == ["embeddings", "transformer_layer_0", "transformer_layer_1"]
    assert groups[-1].name == "head"
    assert {p.split("/")[-1] for p in groups[-1].paths} >= {"head_dense"}


def test_save_and_load_give_identical_tags_on_raw_text(model, tmp_path):
    path = tmp_path / "tagger.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.tags == TAGS and loaded.preprocessor.sequence_length == 12
    x, _, _ = model.preprocessor.align(tf.constant(SENTENCES))
    np.testing.assert_array_equal(loaded(x).numpy(), model(x).numpy())
    raw = SENTENCES + [["alice", "works", "in", "paris"]]
    assert predict_words(loaded, raw) == predict_words(model, raw)


@pytest.mark.slow
def test_runner_fits_the_entities_recipe_and_tracks_entity_f1(tiny_bert_dir, run_in_tmp):
    conll = run_in_tmp / "train.conll"
    lines = []
    for sentence, labels in zip(SENTENCES, LABELS):
        lines += [f"{w} {TAGS[t]}" for w, t in zip(sentence.split(), labels)] + [""]
    conll.write_text("\n".join(lines * 4))
    recipe = load_recipe(REPO / "recipes" / "entities.py")
    # One stage (the head stage has 0 epochs): each stage compiles and traces anew.
    result = runner.run(recipe, data=str(conll), output=str(run_in_tmp / "runs"), overrides={
        "preset": tiny_bert_dir, "sequence_length": 12, "batch_size": 4, "head_epochs": 0,
        "epochs": 1, "lr": 1e-2})
    metrics = json.loads((result.run_dir.path / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["val_entity_f1"] <= 1.0
    assert metrics["best"]["val_entity_f1"] is not None
    assert json.loads((result.run_dir.path / "labels.json").read_text()) == TAGS
    history = (result.run_dir.path / "history.csv").read_text()
    assert "val_entity_f1" in history.splitlines()[0]
    # The checkpoint reloads compiled, so a run could resume from it.
    loaded = keras.saving.load_model(result.run_dir.last_checkpoint)
    assert loaded.optimizer is not None and int(loaded.optimizer.iterations) > 0
