"""Entity-level scores: span extraction, exact matching, and the Keras metric."""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.evaluation.entities import EntityF1, check_tag_layout, entity_scores, entity_spans

TAGS = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def test_spans_follow_conlleval():
    assert entity_spans(["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]) == [
        ("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 6)]
    # An I- that continues nothing starts an entity; a type change ends one.
    assert entity_spans(["O", "I-PER", "I-PER", "I-LOC"]) == [("PER", 1, 3), ("LOC", 3, 4)]
    assert entity_spans(["O", "O"]) == []


def test_scores_need_exact_span_and_type():
    # seqeval's README example: one of two entities is found exactly.
    truth = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    guess = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    scores = entity_scores(truth, guess)
    assert (scores.precision, scores.recall, scores.f1) == (0.5, 0.5, 0.5)
    assert scores.by_type["PER"].f1 == 1.0 and scores.by_type["MISC"].f1 == 0.0

    scores = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "O", "O", "B-ORG"]])
    assert scores.correct == 0 and scores.predicted == 2 and scores.support == 2
    scores = entity_scores([["B-PER", "I-PER", "O", "B-LOC"]], [["B-PER", "I-PER", "O", "O"]])
    assert scores.precision == 1.0 and scores.recall == 0.5
    assert scores.f1 == pytest.approx(2 / 3)
    assert "all" in scores.table()


def test_scores_reject_bad_input():
    with pytest.raises(KftError, match="not a BIO tag"):
        entity_scores([["PER"]], [["O"]])
    with pytest.raises(KftError, match="one tag per word"):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(KftError, match="layout"):
        check_tag_layout(["B-PER", "I-PER", "O"])


def test_keras_metric_matches_reference_on_random_tags():
    rng = np.random.default_rng(0)
    for _ in range(4):
        truth = rng.integers(0, len(TAGS), (6, 14))
        guess = np.where(rng.random(truth.shape) < 0.25, rng.integers(0, len(TAGS), truth.shape), truth)
        # Positions without a label (later wordpieces, padding) sit between
        # words: -1 labels in the first batch, weight 0 in the second.
        valid = rng.random(truth.shape) < 0.7
        metrics = [EntityF1(kind) for kind in ("f1", "precision", "recall")]
        for metric in metrics:
            metric.update_state(np.where(valid, truth, -1)[:3], np.eye(len(TAGS))[guess[:3]])
            metric.update_state(truth[3:], np.eye(len(TAGS))[guess[3:]],
                                valid[3:].astype("float32"))
        reference = entity_scores(
            [[TAGS[i] for i in row[keep]] for row, keep in zip(truth, valid)],
            [[TAGS[i] for i in row[keep]] for row, keep in zip(guess, valid)])
        got = [float(metric.result()) for metric in metrics]
        np.testing.assert_allclose(got, [reference.f1, reference.precision, reference.recall],
                                   atol=1e-6)


def test_keras_metric_config_round_trip():
    metric = EntityF1("recall", name="entity_recall")
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert isinstance(clone, EntityF1) and clone.kind == "recall" and clone.name == "entity_recall"
