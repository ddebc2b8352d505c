"""CoNLL-style tag files and Python lists into token classification datasets."""

import numpy as np
import pytest

from kft.data import token_labels
from kft.errors import KftError

CONLL = """-DOCSTART- -X- O O

Alice NNP B-PER
lives VBZ O
in IN O
New NNP B-LOC
York NNP I-LOC
\t
Bob\tB-PER
works\tO
"""


def test_reads_conll_columns_and_sentence_breaks(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    first, second = token_labels.read_conll(path)
    assert first.words == ["Alice", "lives", "in", "New", "York"]
    assert first.tags == ["B-PER", "O", "O", "B-LOC", "I-LOC"]
    assert first.lines == [3, 4, 5, 6, 7] and first.source == f"{path}:3"
    assert second.words == ["Bob", "works"] and second.tags == ["B-PER", "O"]


@pytest.mark.parametrize("line, message", [
    ("Alice\n", "expected 'WORD TAG'"),
    ("Alice PER\n", "Tag .PER. is not a BIO tag"),
])
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.conll"
    path.write_text("Bob B-PER\n\n" + line)
    with pytest.raises(KftError, match=f"bad.conll:3: {message}"):
        token_labels.read_conll(path)


def test_unknown_tag_names_file_and_line(tmp_path):
    path = tmp_path / "train.conll"
    path.write_text(CONLL)
    with pytest.raises(KftError, match=r"train.conll:6: tag 'B-LOC' is not one of"):
        token_labels.load(path, class_names=["O", "B-PER", "I-PER"], validation_split=0)


def test_lists_are_checked():
    with pytest.raises(KftError, match="2 words but 1 tags"):
        token_labels.from_lists([(["Alice", "lives"], ["B-PER"])])
    with pytest.raises(KftError, match="holds whitespace"):
        token_labels.from_lists([(["New York"], ["B-LOC"])])


def test_tag_names_and_datasets():
    pairs = [("Alice lives in Paris", ["B-PER", "O", "O", "B-LOC"]), ("Bob", ["B-PER"])] * 5
    data = token_labels.load(pairs, batch_size=4, validation_split=0.2, seed=1)
    assert data.class_names == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    assert (data.num_train, data.num_validation) == (8, 2)
    texts, labels = next(iter(data.validation))
    for text, row in zip(texts.numpy(), labels.numpy()):
        expected = [3, 0, 0, 1] if text == b"Alice lives in Paris" else [3, -1, -1, -1]
        np.testing.assert_array_equal(row, expected)
    seen = sorted(t for texts, _ in data.train for t in texts.numpy())
    assert len(seen) == 8
    again = token_labels.load(pairs, batch_size=4, validation_split=0.2, seed=1)
    assert [s.source for s in again.validation_sentences] == [
        s.source for s in data.validation_sentences]


def test_wnut16_comes_from_its_package_with_a_seeded_hold_out():
    from kft.data.datasets import wnut16

    data = wnut16.load(validation_size=400, train_size=100, batch_size=50)
    assert (data.num_train, data.num_validation) == (100, 400)
    assert len(data.class_names) == 21  # O and B-/I- of 10 entity types
    assert "B-geo-loc" in data.class_names and "I-person" in data.class_names
    again = wnut16.load(validation_size=400, train_size=100, batch_size=50)
    assert [s.source for s in again.validation_sentences] == [
        s.source for s in data.validation_sentences]
    with pytest.raises(KftError, match="validation_size"):
        wnut16.load(validation_size=0)
