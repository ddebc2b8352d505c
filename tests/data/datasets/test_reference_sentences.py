"""General English sentences from chatterbot-corpus, the text encoders' reference."""

import pytest

from kft.data.datasets import reference_sentences
from kft.errors import KftError


def test_a_seeded_sample_of_distinct_sentences_of_three_words_or_more():
    first = reference_sentences.sentences(50, seed=0)
    assert len(first) == len(set(first)) == 50
    assert all(len(sentence.split()) >= 3 for sentence in first)
    assert first == reference_sentences.sentences(50, seed=0)
    assert first != reference_sentences.sentences(50, seed=1)


@pytest.mark.parametrize("count, message", [
    (0, "count must be at least 1, got 0"),
    (100_000, r"The reference corpus holds 1569 sentences; asked for 100000"),
])
def test_bad_counts_are_clear_errors(count, message):
    with pytest.raises(KftError, match=message):
        reference_sentences.sentences(count)
