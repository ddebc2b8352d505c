"""kft.inference.evaluate: scores on new labelled data, in a new folder of the run."""

import json

import numpy as np
import pytest

from kft import evaluation, inference
from kft.data import images
from kft.errors import KftError
from kft.models.token_classifier import predict_words


def test_an_image_run_is_scored_per_class_into_a_new_folder(image_run):
    run_dir, new = image_run
    scored = inference.evaluate(run_dir, new)
    assert scored.folder.parent == run_dir / "evaluations"
    assert scored.folder.name.startswith("photos-")
    assert scored.skipped == [str(new / "cat" / "broken.jpg")] and scored.examples == 6

    # The same numbers computed by hand from the model's predictions.
    run = inference.load(run_dir)
    paths = [p for p in images.image_files(new) if p.name != "broken.jpg"]
    pixels, _ = images.read_images(paths, run.image_size)
    truth = [run.labels.index(path.parent.name) for path in paths]
    expected = evaluation.report(np.array(truth), run.model.predict(pixels, verbose=0),
                                 run.labels)
    assert scored.report.accuracy == expected.accuracy
    np.testing.assert_array_equal(scored.report.confusion, expected.confusion)
    # The recipe's own metrics, as `kft run` reports them.
    assert scored.metrics["accuracy"] == pytest.approx(expected.accuracy)
    assert set(scored.metrics) == {"accuracy", "loss"}

    written = json.loads((scored.folder / "metrics.json").read_text())
    assert written["examples"] == 6 and written["data"] == str(new.resolve())
    assert written["evaluation"]["accuracy"] == expected.accuracy
    assert (scored.folder / "confusion_matrix.png").stat().st_size > 1000
    # Never overwritten: a second evaluation gets a folder of its own.
    again = inference.evaluate(run_dir, new)
    assert again.folder != scored.folder and (scored.folder / "metrics.json").is_file()


def test_image_folders_must_be_classes_of_the_run(image_run, tmp_path):
    (tmp_path / "bird").mkdir()
    with pytest.raises(KftError, match=r"class folder\(s\) bird are not classes of this run "
                                       r"\(cat, dog\)"):
        inference.evaluate(image_run[0], tmp_path)
    with pytest.raises(KftError, match="does not exist"):
        inference.evaluate(image_run[0], tmp_path / "missing")


def test_a_text_run_is_scored_on_a_labelled_file(text_run, tmp_path):
    rows = [("great phone", "pos"), ("broke at once", "neg"), ("it is a phone", "neutral"),
            ("love it", "pos")]
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    scored = inference.evaluate(text_run, path)
    run = inference.load(text_run)
    expected = evaluation.report(
        np.array([run.labels.index(label) for _, label in rows]),
        run.model.predict(np.array([t for t, _ in rows]), verbose=0), run.labels)
    assert scored.report.accuracy == expected.accuracy and scored.examples == 4
    assert scored.metrics == {}  # No recipe copy in this run directory.

    path.write_text("text,label\nfine,great\n")
    with pytest.raises(KftError, match=r"label\(s\) 'great' are not classes of this run"):
        inference.evaluate(text_run, path)


def test_a_token_run_is_scored_on_entities(token_run, tmp_path):
    conll = tmp_path / "test.conll"
    conll.write_text("alice B-PER\nlives O\nin O\nparis B-LOC\n\nbob B-PER\nworks O\n")
    scored = inference.evaluate(token_run, conll)
    run = inference.load(token_run)
    predicted = predict_words(run.model, [["alice", "lives", "in", "paris"], ["bob", "works"]])
    expected = evaluation.entities.entity_scores(
        [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O"]], predicted)
    assert scored.entities.f1 == expected.f1 and scored.metrics == {"entity_f1": expected.f1}
    assert json.loads((scored.folder / "metrics.json").read_text())["entities"]["support"] == 3
