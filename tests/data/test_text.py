"""kft.data.text: files, lists and TFDS become checked, split, batched text data."""

import json

import numpy as np
import pytest

from kft.data import text
from kft.data.datasets import sentiment_sentences
from kft.errors import KftError


def _labels(dataset):
    return np.concatenate([np.asarray(y) for _, y in dataset])


def _texts(dataset):
    return [t.decode() for x, _ in dataset for t in x.numpy()]


def _write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_every_file_format_reads_the_same_rows(tmp_path, kind):
    rows = [("great phone, really", "pos"), ("it broke", "neg"), ('"awful" service', "neg"),
            ("love it", "pos")] * 5
    path = tmp_path / f"reviews.{kind}"
    if kind == "jsonl":
        path.write_text("\n".join(json.dumps({"review": t, "stars": l}) for t, l in rows))
    else:
        separator = "\t" if kind == "tsv" else ","
        quote = (lambda t: t) if kind == "tsv" else (lambda t: '"' + t.replace('"', '""') + '"')
        path.write_text(f"review{separator}stars\n" + "\n".join(
            f"{quote(t)}{separator}{l}" for t, l in rows) + "\n")
    data = text.from_file(path, text_column="review", label_column="stars",
                          validation_split=0.2, batch_size=4)
    assert data.class_names == ["neg", "pos"]
    assert data.num_train == 16 and data.num_validation == 4 and data.test is None
    assert sorted(_texts(data.train) + _texts(data.validation)) == sorted(t for t, _ in rows)
    # Each class keeps its share in both splits.
    assert np.bincount(_labels(data.validation)).tolist() == [2, 2]


def test_errors_name_the_file_and_line(tmp_path):
    missing = _write_csv(tmp_path / "a.csv", ["good,pos"], header="sentence,label")
    with pytest.raises(KftError, match=r"a\.csv, line 1 \(header\) has no column 'text'.*'sentence'"):
        text.from_file(missing)
    empty = _write_csv(tmp_path / "b.csv", ["good,pos", "  ,neg"])
    with pytest.raises(KftError, match=r"b\.csv, line 3: the text is empty"):
        text.from_file(empty)
    unknown = _write_csv(tmp_path / "c.csv", ["good,pos", "bad,neg", "meh,neutral"])
    with pytest.raises(KftError, match=r"c\.csv, line 4: label 'neutral' is not one of"):
        text.from_file(unknown, class_names=["neg", "pos"])
    broken = tmp_path / "d.jsonl"
    broken.write_text('{"text": "good", "label": 1}\n{"text": "bad", "label": \n')
    with pytest.raises(KftError, match=r"d\.jsonl, line 2 is not valid JSON"):
        text.from_file(broken)
    no_label = tmp_path / "e.jsonl"
    no_label.write_text('{"text": "good", "label": 1}\n{"text": "bad"}\n')
    with pytest.raises(KftError, match=r"e\.jsonl, line 2 has no 'label' field"):
        text.from_file(no_label)
    with pytest.raises(KftError, match="is not .csv, .tsv or .jsonl"):
        text.from_file(tmp_path / "f.txt")
    with pytest.raises(KftError, match="does not exist"):
        text.from_file(tmp_path / "g.csv")
    with pytest.raises(KftError, match="3 texts but 2 labels"):
        text.from_lists(["a", "b", "c"], [0, 1])
    with pytest.raises(KftError, match="balance"):
        text.from_lists(["a", "b"], [0, 1], balance="smote")


def test_validation_and_test_files_and_numeric_classes(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [f"text {i},{i % 3}" for i in range(30)])
    test = _write_csv(tmp_path / "test.csv", ["a,2", "b,10"])
    with pytest.raises(KftError, match=r"test\.csv, line 3: label '10'"):
        text.from_file(train, test=test)
    _write_csv(test, ["a,2", "b,0"])
    data = text.from_file(train, test=test, validation_split=0.2, batch_size=5)
    assert data.class_names == ["0", "1", "2"]
    assert data.num_test == 2 and _labels(data.test).tolist() == [2, 0]
    assert data.num_validation == 6 and data.num_train == 24


def test_splits_are_seeded_and_train_reshuffles(tmp_path):
    texts = [f"sentence {i}" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    one = text.from_lists(texts, labels, test_split=0.25, validation_split=0.25, batch_size=40)
    two = text.from_lists(texts, labels, test_split=0.25, validation_split=0.25, batch_size=40)
    assert _texts(one.test) == _texts(two.test) and one.num_test == 10
    assert _texts(one.validation) == _texts(two.validation) and one.num_validation == 10
    assert not set(_texts(one.test)) & set(_texts(one.train))
    first, second = _texts(one.train), _texts(one.train)
    assert sorted(first) == sorted(second) and first != second


def test_class_weight_and_oversampling_balance_rare_classes():
    texts = [f"t{i}" for i in range(40)]
    labels = ["common"] * 30 + ["rare"] * 10
    weighted = text.from_lists(texts, labels, validation_split=0, balance="class_weight")
    assert weighted.class_weight == pytest.approx({0: 40 / 60, 1: 40 / 20})
    oversampled = text.from_lists(texts, labels, validation_split=0, balance="oversample")
    assert oversampled.class_weight is None and oversampled.num_train == 60
    assert np.bincount(_labels(oversampled.train)).tolist() == [30, 30]
    assert set(_texts(oversampled.train)) == set(texts)


def test_multi_label_rows_become_multi_hot(tmp_path):
    path = _write_csv(tmp_path / "tags.csv", ['"cheap, fast",price|speed', "slow,speed",
                                              "pricey,price", "ok,speed"])
    data = text.from_file(path, multi_label=True, validation_split=0)
    assert data.class_names == ["price", "speed"] and data.multi_label
    targets = {t.decode(): row.tolist() for x, y in data.train for t, row in zip(x.numpy(), y.numpy())}
    assert targets["cheap, fast"] == [1.0, 1.0] and targets["slow"] == [0.0, 1.0]
    with pytest.raises(KftError, match="class_weight"):
        text.from_file(path, multi_label=True, balance="class_weight")


def test_load_dispatches_and_rejects_other_sources(tmp_path):
    data = text.load((["good", "bad", "fine", "awful"], [1, 0, 1, 0]), validation_split=0.5)
    assert data.num_train == 2 and data.num_validation == 2
    with pytest.raises(KftError, match="Cannot read text data from a int"):
        text.load(3)


def test_tfds_text_dataset(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        data = text.load("tfds:imdb_reviews", batch_size=4, data_dir=tmp_path)
    assert data.class_names == ["neg", "pos"]
    assert data.num_test == 12 and data.num_train + data.num_validation == 12
    assert all(isinstance(t, str) for t in _texts(data.test))


def test_uci_sentences_are_real_and_balanced():
    texts, labels = sentiment_sentences.load_rows()
    assert len(texts) == 3000 and sum(labels) == 1500
    assert any("waste of money" in t.lower() for t in texts)
    data = sentiment_sentences.text_data(limit=200, test_split=0.2, validation_split=0.1)
    assert (data.num_train, data.num_validation, data.num_test) == (140, 20, 40)
    assert data.class_names == ["negative", "positive"]
