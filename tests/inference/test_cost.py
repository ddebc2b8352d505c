"""kft.inference.cost (`kft bench`): every format measured in its own process, on the run's data."""

import json

import numpy as np
import pytest

from kft import inference
from kft.errors import KftError
from kft.export import data_arrays
from kft.export import run_export
from kft.export.signatures import model_input
from kft.inference import cost
from tests.helpers.cli import kft

# Short measurements: the figures are checked for consistency, not speed.
QUICK = dict(seconds=0.05, latency_calls=5)


def test_kft_bench_measures_every_image_format_on_the_validation_set(image_run, tmp_path):
    run_dir, _ = image_run
    done = kft("bench", run_dir, "--seconds", "0.05", "--batch-size", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((run_dir / cost.REPORT_FILE).read_text())
    rows = {row["format"]: row for row in report["formats"]}
    assert list(rows) == list(cost.FORMATS)
    assert not [row["skipped"] for row in rows.values() if row["skipped"]]
    for title in cost.FORMAT_TITLES.values():
        assert title in done.stdout

    run = inference.load(run_dir)
    recipe = run.recipe()
    data = recipe.build_data(recipe.resolve(json.loads((run_dir / "params.json").read_text())))
    images, labels = data_arrays.labelled_examples(data.validation, model_input(run.model))
    keras_accuracy = float(np.mean(run.model.predict(images, verbose=0).argmax(-1) == labels))
    assert report["labelled"] and report["examples"] == len(labels)
    assert report["batch_size"] == 4
    for name in ("keras", "saved_model", "tflite", "onnx"):  # the same float model
        assert rows[name]["accuracy"] == pytest.approx(keras_accuracy), name
    for row in rows.values():
        assert row["inputs"] == "uint8 images"
        assert 0 < row["latency_p50_ms"] <= row["latency_p95_ms"]
        assert row["seconds_per_1000"] == pytest.approx(1000 / row["throughput"])
        assert row["size_bytes"] > 0 and row["load_seconds"] > 0, row
    assert rows["keras"]["size_bytes"] == (run_dir / "model.keras").stat().st_size
    assert rows["tflite_int8"]["size_bytes"] < rows["tflite"]["size_bytes"]
    # ONNX Runtime's process never loads TensorFlow: a fraction of the memory.
    assert rows["onnx"]["peak_memory_bytes"] < rows["saved_model"]["peak_memory_bytes"] / 2
    assert rows["saved_model"]["peak_memory_bytes"] < rows["keras"]["peak_memory_bytes"]


def test_text_formats_without_a_recipe_run_on_synthetic_sentences(text_run):
    found = inference.measure_cost(text_run, formats=["keras", "onnx"], batch_size=8, **QUICK)
    assert (found.labelled, found.examples) == (False, cost._SYNTHETIC_EXAMPLES)
    keras_row, onnx_row = found.formats
    assert (keras_row.inputs, onnx_row.inputs) == ("strings", "token ids")
    assert keras_row.accuracy is None and keras_row.throughput > 0
    assert onnx_row.size_bytes > 0 and onnx_row.latency_p50_ms > 0
    assert json.loads(found.report_file.read_text()) == json.loads(
        json.dumps(found.as_dict()))


def test_token_runs_measure_keras_and_the_serving_model(token_run):
    found = inference.measure_cost(token_run, batch_size=4, **QUICK)
    assert [row.format for row in found.formats] == ["keras", "saved_model"]
    assert [row.skipped for row in found.formats] == [None, None]
    assert {row.inputs for row in found.formats} == {"sentences"}


def test_int8_image_formats_need_calibration_images(image_run, tmp_path):
    run_dir, _ = image_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.keras", "labels.json", "params.json"):  # no recipe.py
        (copy / name).write_bytes((run_dir / name).read_bytes())
    found = inference.measure_cost(copy, formats=["tflite_int8"], **QUICK)
    (row,) = found.formats
    assert row.skipped.startswith("int8 calibrates on the run's training images")
    assert found.labelled is False


@pytest.mark.parametrize("arguments, message", [
    (dict(formats=["tflite"]), r"A text model has no tflite export; its formats are keras, "),
    (dict(formats=["onnx", "pickle"]), r"Unknown format\(s\) pickle; kft measures keras, "),
    (dict(batch_size=0), r"batch_size must be at least 1, got 0"),
])
def test_bad_arguments_are_one_clear_error(text_run, arguments, message):
    report = text_run / cost.REPORT_FILE
    before = report.read_text() if report.exists() else None
    with pytest.raises(KftError, match=message):
        inference.measure_cost(text_run, **arguments)
    assert (report.read_text() if report.exists() else None) == before


def test_a_run_without_its_recipe_copy_names_the_option(image_run, tmp_path):
    run_dir, _ = image_run
    with pytest.raises(KftError, match="holds no copy of it"):
        run_export.recipe_data(tmp_path, {}, None, "kft bench measures on the run's data")
