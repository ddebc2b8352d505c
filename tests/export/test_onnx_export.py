"""kft.export.onnx: ONNX files that ONNX Runtime alone runs like the Keras model, float and int8."""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import kft
import kft.export
from kft.errors import KftError
from kft.export import model_json
from kft.runs import recipe as recipes
from kft.runs import runner
from tests.helpers.cli import TINY, kft as kft_command, write_pet_images
from tests.helpers.tiny_models import random_images, tiny_image_model
from tests.helpers.tiny_models import trained_quantization_subject

LABELS = ["dark", "mid", "bright"]
TEXTS = np.array(["the movie was good", "a terrible , boring film", "i loved it !", "bad",
                  "alice works at acme", "the food was awful", "great phone", "it was fine"] * 3,
                 object)

# Runs ONNX files as a deployment would: onnxruntime and numpy, no kft, Keras,
# TensorFlow or keras-hub. argv: REQUESTS.json RESULTS.json, requests being
# {"model": FILE, "feeds": {name: NPY}}; results {"outputs": [...], "inputs":
# [...], "modules": forbidden modules loaded (must be none)}.
_ORT_PROCESS = r'''
import importlib.abc, json, sys
FORBIDDEN = ("kft", "keras", "keras_hub", "tensorflow", "tf2onnx")
class Forbidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in FORBIDDEN:
            raise ImportError(f"running an ONNX export must not need {name}")
sys.meta_path.insert(0, Forbidden())
import numpy as np
import onnxruntime
results = []
for request in json.load(open(sys.argv[1])):
    session = onnxruntime.InferenceSession(request["model"], providers=["CPUExecutionProvider"])
    feeds = {name: np.load(path) for name, path in request["feeds"].items()}
    (probabilities,) = session.run(["probabilities"], feeds)
    results.append({
        "probabilities": probabilities.tolist(),
        "inputs": {i.name: [i.type, i.shape] for i in session.get_inputs()},
        "metadata": session.get_modelmeta().custom_metadata_map,
    })
modules = sorted(m for m in sys.modules if m.split(".")[0] in FORBIDDEN)
json.dump({"results": results, "modules": modules}, open(sys.argv[2], "w"))
'''


def _run_fresh(tmp_path, requests):
    """Runs `[(onnx file, {name: array})]` in a fresh onnxruntime-only process."""
    listed = []
    for index, (model, feeds) in enumerate(requests):
        paths = {}
        for name, array in feeds.items():
            paths[name] = str(tmp_path / f"feed{index}_{name}.npy")
            np.save(paths[name], array)
        listed.append({"model": str(model), "feeds": paths})
    (tmp_path / "requests.json").write_text(json.dumps(listed))
    (tmp_path / "ort.py").write_text(_ORT_PROCESS)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "ort.py"), str(tmp_path / "requests.json"),
         str(tmp_path / "results.json")], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads((tmp_path / "results.json").read_text())
    assert answer["modules"] == []
    return answer["results"]


def _onnx_ops(path):
    import onnx

    graph = onnx.load(str(path)).graph
    return ({node.op_type for node in graph.node},
            {init.name: onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
             for init in graph.initializer})


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    model, (train_x, train_y), (val_x, val_y) = trained_quantization_subject(len(LABELS), 16)
    folder = tmp_path_factory.mktemp("onnx") / "tiny"
    batches = tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(16)
    report = kft.export.onnx(model, folder, labels=LABELS, quantize="int8",
                             representative_data=batches, validation_data=(val_x, val_y))
    return types.SimpleNamespace(model=model, folder=folder, report=report,
                                 val_x=val_x, val_y=val_y)


def test_image_float_onnx_equals_keras_in_a_process_without_kft(image_export, tmp_path):
    ex = image_export
    assert sorted(p.name for p in ex.folder.iterdir()) == [
        "labels.json", "model.json", "model.onnx", "model_int8.onnx"]
    (float_result, int8_result) = _run_fresh(tmp_path, [
        (ex.folder / "model.onnx", {"images": ex.val_x}),
        (ex.folder / "model_int8.onnx", {"images": ex.val_x})])
    # Raw uint8 pixels in: the model's scaling layer is inside the graph.
    assert float_result["inputs"] == {"images": ["tensor(uint8)", ["batch", 16, 16, 3]]}
    assert json.loads(float_result["metadata"]["labels"]) == LABELS
    expected = ex.model.predict(ex.val_x, verbose=0)
    np.testing.assert_allclose(float_result["probabilities"], expected, atol=1e-5, rtol=0)
    int8 = np.array(int8_result["probabilities"])
    assert ex.report.int8_accuracy == pytest.approx(
        float(np.mean(int8.argmax(-1) == ex.val_y)), abs=1e-9)
    np.testing.assert_allclose(int8, expected, atol=0.05)
    assert not np.allclose(int8, expected, atol=1e-6, rtol=0)  # Quantized, not a copy.


def test_image_report_measures_float_and_int8(image_export):
    report, ex = image_export.report, image_export
    keras_accuracy = float(np.mean(ex.model.predict(ex.val_x, verbose=0).argmax(-1) == ex.val_y))
    assert keras_accuracy > 0.6  # Trained, so int8 has something to lose.
    assert report.keras_accuracy == pytest.approx(keras_accuracy, abs=1e-9)
    assert report.float_accuracy == pytest.approx(keras_accuracy, abs=1e-9)
    assert report.validation_examples == report.checked_examples == 30
    assert report.max_abs_difference <= 1e-5
    assert report.model_bytes == (ex.folder / "model.onnx").stat().st_size
    assert report.int8_bytes == (ex.folder / "model_int8.onnx").stat().st_size
    assert 0.9 <= report.int8_agreement <= 1.0
    card = json.loads((ex.folder / "model.json").read_text())
    assert card["format"] == "onnx" and card["labels"] == LABELS
    assert card["quantization"]["int8_accuracy"] == report.int8_accuracy
    assert card["quantization"]["method"].startswith("static QDQ, per-channel")
    assert card["check"]["max_abs_difference"] == report.max_abs_difference
    assert json.loads((ex.folder / "labels.json").read_text()) == LABELS


def test_image_int8_quantizes_convolutions_per_channel(image_export):
    ops, initializers = _onnx_ops(image_export.folder / "model_int8.onnx")
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    int8_weights = [name for name, dtype in initializers.items() if dtype == np.int8]
    assert len(int8_weights) >= 3  # Both convolutions and the dense layer.
    import onnx

    graph = onnx.load(str(image_export.folder / "model_int8.onnx")).graph
    scales = [init for init in graph.initializer if init.name.endswith("_scale")]
    assert any(len(scale.dims) == 1 and scale.dims[0] in (4, 8) for scale in scales)


def test_text_model_takes_token_ids_and_ships_its_tokenizer(tiny_bert_dir, tmp_path):
    import keras_hub

    model = kft.text.text_classifier(tiny_bert_dir, num_classes=3, sequence_length=12)
    labels = np.arange(len(TEXTS)) % 3
    report = kft.export.onnx(model, tmp_path / "text", labels=LABELS, quantize="int8",
                             validation_data=(TEXTS, labels))
    folder = report.folder
    card = json.loads((folder / "model.json").read_text())
    assert card["tokenizer"]["sequence_length"] == 12
    assert card["tokenizer"]["files"] == ["tokenizer/assets/tokenizer/vocabulary.txt"]
    assert card["quantization"]["method"].startswith("dynamic")
    # The documented way to tokenize: keras-hub rebuilds the run's preprocessor.
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        str(folder / "tokenizer"))
    feeds = {name: np.asarray(value).astype("int32")
             for name, value in preprocessor(tf.constant(TEXTS.tolist())).items()}
    float_result, int8_result = _run_fresh(
        tmp_path, [(folder / "model.onnx", feeds), (folder / "model_int8.onnx", feeds)])
    assert float_result["inputs"] == {
        name: ["tensor(int32)", ["batch", "sequence"]]
        for name in ("padding_mask", "segment_ids", "token_ids")}
    expected = model.predict(TEXTS, verbose=0)
    np.testing.assert_allclose(float_result["probabilities"], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(int8_result["probabilities"], expected, atol=0.05)
    assert report.float_accuracy == pytest.approx(
        float(np.mean(expected.argmax(-1) == labels)), abs=1e-9)
    assert report.int8_accuracy is not None and report.int8_agreement >= 0.9
    ops, initializers = _onnx_ops(folder / "model_int8.onnx")
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    assert sum(dtype == np.int8 for dtype in initializers.values()) >= 12  # 2 layers x 6 matmuls


def test_lora_adapters_are_merged_and_the_model_left_alone(tmp_path):
    model = tiny_image_model(len(LABELS), 16)
    kft.peft.apply_lora(model, rank=2, alpha=4)
    lora_kernel = next(v for v in model.weights if "lora_b" in v.path)
    lora_kernel.assign(np.full(lora_kernel.shape, 0.3, "float32"))  # A non-zero update.
    images = random_images(8, seed=5)[0]
    before = model.predict(images, verbose=0)
    report = kft.export.onnx(model, tmp_path / "lora", validation_data=(images, np.zeros(8)))
    assert json.loads((report.folder / "model.json").read_text())["lora_merged"] is True
    assert report.max_abs_difference <= 1e-5
    (result,) = _run_fresh(tmp_path, [(report.model_file, {"images": images})])
    np.testing.assert_allclose(result["probabilities"], before, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(model.predict(images, verbose=0), before)
    assert any("lora" in v.path for v in model.weights)


def test_bad_requests_are_one_error_and_write_nothing(tmp_path):
    model = tiny_image_model(len(LABELS), 16)
    with pytest.raises(KftError, match="needs representative_data"):
        kft.export.onnx(model, tmp_path / "a", quantize="int8")
    with pytest.raises(KftError, match="quantize='int4' is not supported"):
        kft.export.onnx(model, tmp_path / "a", quantize="int4")
    inputs = keras.Input((4,), name="features")
    two_outputs = keras.Model(inputs, [keras.layers.Dense(2)(inputs), keras.layers.Dense(3)(inputs)])
    with pytest.raises(KftError, match="one input .* and one output"):
        kft.export.onnx(two_outputs, tmp_path / "a")
    strings = keras.Input((), dtype="string")
    vectorize = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=4)
    vectorize.adapt(["a b c", "d e"])
    tokens = keras.layers.Embedding(10, 2)(vectorize(strings))
    text_model = keras.Model(
        strings, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(tokens)))
    with pytest.raises(KftError, match="keras-hub text classifiers"):
        kft.export.onnx(text_model, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "taken").mkdir()
    with pytest.raises(KftError, match="never overwritten"):
        kft.export.onnx(model, tmp_path / "taken")


def test_a_failed_write_publishes_nothing(tmp_path, monkeypatch):
    def full_disk(folder, card):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_json, "write_model_json", full_disk)
    with pytest.raises(KftError, match="No space left on device; nothing was published"):
        kft.export.onnx(tiny_image_model(len(LABELS), 16), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # Neither the folder nor its staging copy.


@pytest.mark.slow
def test_kft_export_format_onnx_on_a_run(tmp_path):
    pets = write_pet_images(tmp_path / "pets")
    result = runner.run(recipes.load(TINY), overrides=[
        f"data={pets}", "head_epochs=1", "finetune_epochs=1", "image_size=16"],
        output=tmp_path / "runs", verbose=False)
    run_dir = result.run_dir.path
    done = kft_command("export", run_dir, "--format", "onnx", "--quantize", "int8",
                       "--to", tmp_path / "onnx", cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    version = tmp_path / "onnx" / "tiny" / "1"
    assert f"to {version} as ONNX" in done.stdout
    assert "int8 ONNX" in done.stdout and "val_accuracy" in done.stdout
    card = json.loads((version / "model.json").read_text())
    assert card["labels"] == ["cat", "dog"] and card["source"]["run_dir"] == str(run_dir.resolve())
    assert card["quantization"]["validation_examples"] >= 1
    images = random_images(6, num_classes=2, seed=3)[0]
    (answer,) = _run_fresh(tmp_path, [(version / "model.onnx", {"images": images})])
    np.testing.assert_allclose(answer["probabilities"],
                               result.model.predict(images, verbose=0), atol=1e-5, rtol=0)
    # The next export takes the next version, like the TF Serving export.
    report = kft.export.export_run_onnx(run_dir, tmp_path / "onnx")
    assert report.folder == tmp_path / "onnx" / "tiny" / "2" and report.int8_file is None
    (run_dir / "recipe.py").unlink()
    with pytest.raises(KftError, match="pass the recipe the run was trained with"):
        kft.export.export_run_onnx(run_dir, tmp_path / "onnx", quantize="int8")
    assert sorted(p.name for p in (tmp_path / "onnx" / "tiny").iterdir()) == ["1", "2"]
