"""`kft.suggest` on text classifiers: masked pooling, and real MiniLM telling domains apart."""

import numpy as np
import pytest

import kft
from kft.data.datasets import reference_sentences
from kft.data.instructions import chatterbot_statements
from kft.internal import assets
from kft.suggestion import group_feature_model
from kft.suggestion import pooled_features


def _features(model, texts):
    features, names = group_feature_model(model)
    inputs = {key: np.asarray(value) for key, value in model.preprocessor(np.array(texts)).items()}
    return names, pooled_features(features, inputs)


def test_padding_does_not_count_in_a_groups_pooled_output(tiny_bert_dir):
    texts = ["the phone broke at once", "great"]
    short = kft.text.text_classifier(str(tiny_bert_dir), num_classes=2, sequence_length=8)
    long = kft.text.text_classifier(str(tiny_bert_dir), num_classes=2, sequence_length=16)
    names, found_short = _features(short, texts)
    assert names == ["embeddings", "transformer_layer_0", "transformer_layer_1", "pooler"]
    for a, b in zip(found_short, _features(long, texts)[1]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_minilm_finds_spanish_farther_from_english_than_english_reviews():
    model = kft.text.text_classifier("minilm", num_classes=2, sequence_length=32)
    english = kft.data.datasets.sentiment_sentences.text_data(batch_size=32).train
    folder = assets.pypi_package(*reference_sentences.PACKAGE) / "chatterbot_corpus" / "data"
    spanish = [s for s in chatterbot_statements(folder / "spanish") if len(s.split()) >= 3][:64]
    reviews = kft.suggest(model, english, samples=64)
    other_language = kft.suggest(model, (np.array(spanish), np.arange(64) % 2), samples=64)
    print([round(g.distance, 3) for g in reviews.groups],
          [round(g.distance, 3) for g in other_language.groups])
    # From the embeddings on, another language is farther than another English genre.
    for near, far in zip(reviews.groups, other_language.groups):
        assert far.distance > near.distance, near.name
    assert other_language.groups[0].distance > 0.5
    assert reviews.unfreeze >= 1 and 0.5 <= reviews.layer_decay <= 1.0
