"""kft.inference.predict: a run's model on new images and texts, as training saw them."""

import csv
import io
import json
import sys

import numpy as np
import pytest
from PIL import Image

from kft import inference
from kft.data import images
from kft.errors import KftError
from kft.models.token_classifier import predict_words
from tests.inference.conftest import TAGS


def test_images_are_predicted_as_training_decodes_them(image_run):
    run_dir, new = image_run
    run = inference.load(run_dir)
    assert (run.kind, run.labels, run.image_size) == ("image", ["cat", "dog"], (16, 16))
    done = []
    found = inference.predict(run, [new, new / "dog" / "0.jpg"], top=2,
                              progress=lambda n, total: done.append((n, total)))

    files = images.image_files(new) + [new / "dog" / "0.jpg"]
    readable = [path for path in files if path.name != "broken.jpg"]
    assert [row.input for row in found.rows] == [str(path) for path in readable]
    assert found.skipped == [str(new / "cat" / "broken.jpg")]
    pixels, _ = images.read_images(readable, (16, 16))
    expected = run.model.predict(pixels, verbose=0)
    for row, probabilities in zip(found.rows, expected):
        assert [label for label, _ in row.top] == [run.labels[i] for i in np.argsort(-probabilities)]
        np.testing.assert_allclose([p for _, p in row.top], np.sort(probabilities)[::-1],
                                   rtol=1e-6)
    assert done[-1] == (len(readable), len(files))
    # The photos are easy: the trained tiny model tells the classes apart.
    assert [row.label for row in found.rows] == [path.parent.name for path in readable]


def test_predictions_write_csv_and_jsonl(image_run, tmp_path):
    run_dir, new = image_run
    found = inference.predict(run_dir, [new / "dog"], top=2)
    found.write(tmp_path / "out.csv")
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["input", "label", "probability", "label_2", "probability_2"]
    assert [row["label"] for row in rows] == [row.label for row in found.rows]
    found.write(tmp_path / "out.jsonl")
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert lines[0]["top"][1]["label"] == found.rows[0].top[1][0]
    with pytest.raises(KftError, match="write predictions to a .csv or .jsonl file"):
        found.write(tmp_path / "out.txt")


@pytest.mark.parametrize("inputs, texts, message", [
    (["@notes.txt"], (), r"notes.txt is not an image \(.jpg.*this run classifies images"),
    (["/no/such.jpg"], (), r"/no/such.jpg does not exist: an image run takes image files"),
    (["@empty"], (), r"Folder .*empty holds no images"),
    ([], ("a sentence",), r"This run classifies images: pass image files or folders, not --text"),
])
def test_an_image_run_refuses_other_inputs(image_run, tmp_path, inputs, texts, message):
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "empty").mkdir()
    inputs = [str(tmp_path / item[1:]) if item.startswith("@") else item for item in inputs]
    with pytest.raises(KftError, match=message):
        inference.predict(image_run[0], inputs, texts=texts)


def test_texts_come_from_lines_table_columns_stdin_and_the_command_line(
        text_run, tmp_path, monkeypatch):
    (tmp_path / "reviews.txt").write_text("great phone\n\nbroke at once\n")
    (tmp_path / "reviews.csv").write_text("id,review\n1,love it\n2,\"meh, fine\"\n")
    (tmp_path / "reviews.jsonl").write_text('{"review": "awful"}\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))
    run = inference.load(text_run)
    assert run.kind == "text"
    found = inference.predict(
        run, [tmp_path / "reviews.txt", tmp_path / "reviews.csv", tmp_path / "reviews.jsonl",
              "-"], texts=["typed"], column="review", top=3)

    texts = ["typed", "great phone", "broke at once", "love it", "meh, fine", "awful",
             "from stdin"]
    assert [row.text for row in found.rows] == texts
    assert found.rows[2].input == f"{tmp_path / 'reviews.txt'}, line 3"
    assert found.rows[3].input == f"{tmp_path / 'reviews.csv'}, line 2"
    expected = run.model.predict(np.array(texts), verbose=0)
    np.testing.assert_allclose([[dict(row.top)[label] for label in run.labels]
                                for row in found.rows], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name, content, message", [
    ("photo.png", None, r"photo.png is an image: this run classifies text"),
    ("missing.txt", None, r"missing.txt does not exist: a text run takes"),
    ("blank.txt", "\n \n", r"No text to predict"),
    ("rows.csv", "id,body\n1,x\n", r"rows.csv, line 1 \(header\) has no column 'text'"),
])
def test_a_text_run_refuses_other_inputs(text_run, tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    elif name.endswith(".png"):
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
    with pytest.raises(KftError, match=message):
        inference.predict(text_run, [path])


def test_a_token_run_tags_every_word(token_run, tmp_path):
    sentences = ["alice lives in paris", "bob works at acme in london"]
    (tmp_path / "sentences.txt").write_text("\n".join(sentences) + "\n")
    run = inference.load(token_run)
    assert run.kind == "token" and run.labels == TAGS
    found = inference.predict(run, [tmp_path / "sentences.txt"])
    assert [row.tags for row in found.rows] == predict_words(run.model, sentences)
    assert [len(row.tags) for row in found.rows] == [4, 6]
    found.write(tmp_path / "tags.csv")
    with open(tmp_path / "tags.csv", newline="") as handle:
        assert next(csv.DictReader(handle))["tags"] == " ".join(found.rows[0].tags)


def test_a_folder_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(KftError, match="holds no model.keras: pass a finished run directory"):
        inference.load(tmp_path)
