"""A real fine-tune: MiniLM learns to tag entities in sentences it never saw.

Training and held-out sentences share no template and no name
(tests/helpers/entity_sentences.py), so the held-out F1 measures what the pretrained
encoder brings, through kft's alignment and back to words.
"""

import keras
import pytest

import kft
from kft.data import token_labels
from kft.evaluation.entities import entity_scores
from kft.models.token_classifier import predict_words, token_classifier
from tests.helpers.entity_sentences import sentences


@pytest.mark.slow
def test_minilm_head_tags_held_out_entities():
    keras.utils.set_random_seed(0)
    data = token_labels.load(sentences("train", 192), batch_size=16, validation_split=0)
    held_out = sentences("held_out", 48, seed=1)
    model = token_classifier("minilm", data.class_names, sequence_length=20)
    backbone_before = [v.numpy() for v in model.backbone.weights]
    head_before = model.get_layer("head_dense").kernel.numpy()

    kft.freeze(model)
    kft.unfreeze(model, select="head")
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    model.fit(data.train, epochs=1, verbose=0)

    untrained = entity_scores([tags for _, tags in held_out],
                              [["O"] * len(words) for words, _ in held_out])
    scores = entity_scores([tags for _, tags in held_out],
                           predict_words(model, [words for words, _ in held_out]))
    print(scores.table())
    assert untrained.f1 == 0.0
    assert scores.f1 > 0.5
    assert all(scores.by_type[kind].f1 > 0.3 for kind in ("LOC", "ORG", "PER"))
    assert (model.get_layer("head_dense").kernel.numpy() != head_before).any()
    for before, after in zip(backbone_before, model.backbone.weights):
        assert (before == after.numpy()).all(), after.path
