"""kft.export.serving: TF Serving exports that load without kft and answer like the Keras model.

The exports are loaded in a fresh process that cannot import kft or
keras-hub (tests/helpers/serving_process.py) and fed the bytes of real image files;
their answers must equal the Keras model's to 1e-5.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import kft.export
from kft import peft
from kft.errors import KftError
from kft.export import model_json
from kft.export import versions
from tests.helpers.process import REPO
from tests.helpers.tiny_models import random_images, tiny_image_model

LABELS = ["dark", "mid", "bright"]
SIZE = 16
SERVING_PROCESS = REPO / "tests" / "helpers" / "serving_process.py"


def _trained_image_model():
    keras.utils.set_random_seed(0)
    model = tiny_image_model(len(LABELS), SIZE)
    images, labels = random_images(48, SIZE)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=3, batch_size=16, verbose=0)
    return model


def _text_model():
    sentences = ["a good film", "a bad film", "good acting", "bad plot", "great", "awful"]
    vectorize = keras.layers.TextVectorization(max_tokens=16, output_sequence_length=4)
    vectorize.adapt(sentences)
    inputs = keras.Input(shape=(), dtype="string", name="text")
    x = keras.layers.Embedding(16, 4, name="embed")(vectorize(inputs))
    x = keras.layers.GlobalAveragePooling1D(name="head_pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head_dense")(x)
    return keras.Model(inputs, outputs, name="tiny_text"), sentences


def _lora_model():
    keras.utils.set_random_seed(1)
    model = tiny_image_model(len(LABELS), SIZE, name="tiny_lora")
    peft.apply_lora(model, targets=["head_dense"], rank=2)
    # B starts at zero; a non-zero update makes the merge matter.
    _, layer = peft.lora_layers(model)[0]
    for variable in layer.adapter_variables(layer.active_adapter).values():
        variable.assign(np.random.default_rng(0).normal(size=variable.shape).astype("float32"))
    return model


def _weights(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def _write_image_files(folder):
    """PNG and JPEG files, exact-size, grey and oversized; returns names, bytes, decoded pixels."""
    images, _ = random_images(6, SIZE)
    rng = np.random.default_rng(3)
    files = {}
    for index in range(3):
        files[f"exact{index}.png"] = (Image.fromarray(images[index]), "PNG")
    files["photo.jpg"] = (Image.fromarray(images[3]), "JPEG")
    grey = rng.integers(0, 256, (SIZE, SIZE)).astype("uint8")
    files["grey.png"] = (Image.fromarray(grey, "L"), "PNG")
    large = rng.integers(0, 256, (40, 28, 3)).astype("uint8")
    files["large.png"] = (Image.fromarray(large), "PNG")
    # Phone photos: pixels as the sensor saw them, and an EXIF orientation.
    sideways = rng.integers(0, 256, (14, 24, 3)).astype("uint8")
    for orientation in range(2, 9):
        files[f"orientation{orientation}.jpg"] = (Image.fromarray(sideways), "JPEG", orientation)
    paths = []
    for name, (image, fmt, *orientation) in files.items():
        path = folder / name
        options = {}
        if orientation:
            exif = Image.Exif()
            exif[0x0112] = orientation[0]
            options["exif"] = exif.tobytes()
        image.save(path, format=fmt, **options)
        paths.append(path)
    # What the Keras model sees for the same files: PNG pixels as written, the
    # JPEG as TensorFlow decodes it, grey replicated to RGB, the large image
    # resized as kft.data.images does (bilinear, antialiased, rounded).
    def resized(pixels):
        pixels = tf.image.resize(pixels, (SIZE, SIZE), method="bilinear", antialias=True)
        return np.clip(np.round(pixels.numpy()), 0, 255).astype("uint8")

    # Turned upright the way PIL's exif_transpose does it in training.
    upright = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}
    pixels = np.stack([
        images[0], images[1], images[2],
        tf.io.decode_jpeg(paths[3].read_bytes(), channels=3).numpy(),
        np.repeat(grey[..., None], 3, axis=-1),
        resized(large),
        *[resized(np.asarray(Image.fromarray(tf.io.decode_jpeg(path.read_bytes()).numpy())
                             .transpose(upright[orientation])))
          for orientation, path in zip(range(2, 9), paths[6:])],
    ])
    return paths, pixels


def _serve(requests, folder, tensorflow_text=False):
    requests_path, results_path = folder / "requests.json", folder / "results.json"
    requests_path.write_text(json.dumps(requests))
    command = [sys.executable, str(SERVING_PROCESS), str(requests_path), str(results_path)]
    if tensorflow_text:
        command.append("--tensorflow-text")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(results_path.read_text())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Image, text and LoRA models, their exports, and a fresh process's answers."""
    root = tmp_path_factory.mktemp("export")
    base = root / "models"
    image_model = _trained_image_model()
    text_model, sentences = _text_model()
    lora_model = _lora_model()
    lora_before = _weights(lora_model)
    paths, pixels = _write_image_files(root)
    np.save(root / "one.npy", pixels[:1])
    np.save(root / "four.npy", pixels[:4])

    image_dir = kft.export.serving(image_model, base, name="tiny", labels=LABELS)
    text_dir = kft.export.serving(text_model, base, labels=["neg", "pos"])
    lora_dir = kft.export.serving(lora_model, base, labels=LABELS)
    served = _serve([
        {"export": str(image_dir), "signature": "serving_default", "argument": "image_bytes",
         "files": [str(p) for p in paths]},
        {"export": str(image_dir), "signature": "serving_default", "argument": "image_bytes",
         "files": [str(paths[0])]},
        {"export": str(image_dir), "signature": "predict_images", "argument": "images",
         "npy": str(root / "four.npy")},
        {"export": str(image_dir), "signature": "predict_images", "argument": "images",
         "npy": str(root / "one.npy")},
        {"export": str(text_dir), "signature": "serving_default", "argument": "text",
         "strings": sentences},
        {"export": str(lora_dir), "signature": "predict_images", "argument": "images",
         "npy": str(root / "four.npy")},
    ], root)
    return types.SimpleNamespace(
        root=root, base=base, image_model=image_model, image_dir=image_dir,
        text_model=text_model, text_dir=text_dir, sentences=sentences,
        lora_model=lora_model, lora_before=lora_before, lora_dir=lora_dir,
        pixels=pixels, results=served["results"], modules=served["modules"],
    )


def _assert_answers(result, expected, labels):
    probabilities = np.array(result["probabilities"])
    np.testing.assert_allclose(probabilities, expected, atol=1e-5, rtol=0)
    assert result["class_index"] == expected.argmax(-1).tolist()
    assert result["label"] == [labels[i] for i in expected.argmax(-1)]


def test_layout_is_what_tf_serving_loads(exported):
    assert exported.image_dir == exported.base / "tiny" / "1"
    names = {p.name for p in exported.image_dir.iterdir()}
    assert {"saved_model.pb", "variables", "assets", "model.json"} <= names
    assert not [p for p in (exported.base / "tiny").iterdir() if p.name != "1"]
    assert exported.text_dir == exported.base / "tiny_text" / "1"


def test_fresh_process_without_kft_serves_encoded_images_like_keras(exported):
    assert exported.modules == []
    expected = exported.image_model.predict(exported.pixels, verbose=0)
    mixed, single = exported.results[0], exported.results[1]
    _assert_answers(mixed, expected, LABELS)
    _assert_answers(single, expected[:1], LABELS)
    assert mixed["inputs"] == {"image_bytes": ["string", [None]]}


def test_fresh_process_serves_decoded_arrays_with_a_dynamic_batch(exported):
    expected = exported.image_model.predict(exported.pixels[:4], verbose=0)
    four, one = exported.results[2], exported.results[3]
    _assert_answers(four, expected, LABELS)
    _assert_answers(one, expected[:1], LABELS)
    assert four["inputs"] == {"images": ["uint8", [None, SIZE, SIZE, 3]]}


def test_text_model_serves_raw_strings(exported):
    result = exported.results[4]
    expected = exported.text_model.predict(tf.constant(exported.sentences), verbose=0)
    _assert_answers(result, expected, ["neg", "pos"])
    assert result["inputs"] == {"text": ["string", [None]]}
    card = json.loads((exported.text_dir / "model.json").read_text())
    assert card["task"] == "text_classification"
    assert list(card["signatures"]) == ["serving_default"]


def test_lora_is_merged_for_serving_and_the_model_is_left_alone(exported):
    expected = exported.lora_model.predict(exported.pixels[:4], verbose=0)
    _assert_answers(exported.results[5], expected, LABELS)
    card = json.loads((exported.lora_dir / "model.json").read_text())
    assert card["lora_merged"] is True
    layer = exported.lora_model.get_layer("head_dense")
    assert layer.merged_adapter is None and layer.adapter_names == ["default"]
    for path, value in _weights(exported.lora_model).items():
        np.testing.assert_array_equal(value, exported.lora_before[path])
    # The served graph holds a plain kernel: no adapter variables left.
    variables = tf.train.list_variables(str(exported.lora_dir / "variables" / "variables"))
    assert variables and not [name for name, _ in variables if "lora" in name.lower()]


def test_lora_on_an_int8_base_is_served_unmerged(tmp_path):
    # Merging into an int8 kernel would quantize the update again; the
    # adapter stays beside it, with the same outputs.
    model = tiny_image_model(len(LABELS), SIZE, name="tiny_qlora")
    model.quantize("int8", filters=lambda layer: layer.name == "head_dense")
    peft.apply_lora(model, targets=["head_dense"], rank=2)
    _, layer = peft.lora_layers(model)[0]
    layer.adapter_variables(layer.active_adapter)["lora_b"].assign(np.full((2, 3), 0.5, "float32"))
    images = random_images(4, SIZE)[0]
    path = kft.export.serving(model, tmp_path, labels=LABELS)
    served = tf.saved_model.load(str(path)).signatures["predict_images"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), model.predict(images, verbose=0),
                               atol=1e-5, rtol=0)
    assert json.loads((path / "model.json").read_text())["lora_merged"] is False


def _signature_defs(text):
    """`saved_model_cli show --all` -> {signature: {"inputs"|"outputs": {name: (dtype, shape)}}}."""
    signatures = {}
    for block in re.split(r"\nsignature_def\['", text)[1:]:
        name = block.split("'", 1)[0]
        entry = {"inputs": {}, "outputs": {}}
        for kind, key, dtype, shape in re.findall(
            r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (.+)", block
        ):
            entry[kind][key] = (dtype, shape.strip())
        signatures[name] = entry
    return signatures


def test_saved_model_cli_lists_the_signatures(exported):
    cli = pathlib.Path(sys.executable).with_name("saved_model_cli")
    done = subprocess.run([str(cli), "show", "--dir", str(exported.image_dir), "--all"],
                          capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert done.returncode == 0, done.stderr[-2000:]
    signatures = _signature_defs(done.stdout)
    outputs = {
        "probabilities": ("DT_FLOAT", "(-1, 3)"),
        "class_index": ("DT_INT64", "(-1)"),
        "label": ("DT_STRING", "(-1)"),
    }
    assert signatures["serving_default"] == {
        "inputs": {"image_bytes": ("DT_STRING", "(-1)")}, "outputs": outputs}
    assert signatures["predict_images"] == {
        "inputs": {"images": ("DT_UINT8", f"(-1, {SIZE}, {SIZE}, 3)")}, "outputs": outputs}


def test_each_weight_is_stored_once(exported):
    # keras.export stores every weight twice (keras-team/keras#23553); kft's does not.
    stored = tf.train.list_variables(str(exported.image_dir / "variables" / "variables"))
    stored_values = sum(int(np.prod(shape)) for name, shape in stored
                        if name != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored_values == sum(int(np.prod(v.shape)) for v in exported.image_model.variables)


def test_model_json_describes_the_export(exported):
    card = json.loads((exported.image_dir / "model.json").read_text())
    assert card["name"] == "tiny" and card["labels"] == LABELS
    assert card["task"] == "image_classification"
    assert card["input"]["height"] == SIZE and card["input"]["dtype"] == "uint8"
    assert card["signatures"]["serving_default"]["inputs"] == {"image_bytes": "string [batch]"}
    assert card["lora_merged"] is False and card["quantization"] is None
    assert card["versions"]["tensorflow"] == tf.__version__


def test_next_version_is_the_next_free_integer(exported, tmp_path):
    for existing in ("1", "7"):
        (tmp_path / "m" / existing).mkdir(parents=True)
        (tmp_path / "m" / existing / "saved_model.pb").write_bytes(b"older")
    (tmp_path / "m" / "notes").mkdir()  # Not a version: TF Serving skips it too.
    after = kft.export.serving(exported.image_model, tmp_path, name="m", labels=LABELS)
    given = kft.export.serving(exported.image_model, tmp_path, name="m", version=3,
                               labels=LABELS, metadata={"note": "given"})
    assert (after.name, given.name) == ("8", "3")
    assert versions.versions(tmp_path / "m") == [1, 3, 7, 8]
    assert json.loads((given / "model.json").read_text())["note"] == "given"


def test_an_existing_version_is_never_overwritten(exported):
    path = exported.image_dir
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    other = tiny_image_model(len(LABELS), SIZE)
    with pytest.raises(KftError, match=r"Version 1 already exists .* never overwritten.*\(2\)"):
        kft.export.serving(other, exported.base, name="tiny", version=1, labels=LABELS)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["1"]


def test_failure_mid_export_leaves_no_version(exported, tmp_path, monkeypatch):
    seen = {}

    def fail_after_the_saved_model(folder, card):
        seen["saved_model"] = (folder / "saved_model.pb").is_file()
        seen["folder"] = folder
        raise RuntimeError("disk full")

    monkeypatch.setattr(model_json, "write_model_json", fail_after_the_saved_model)
    with pytest.raises(RuntimeError, match="disk full"):
        kft.export.serving(exported.image_model, tmp_path, name="m", labels=LABELS)
    assert seen["saved_model"] and seen["folder"].name.startswith(".")
    assert list((tmp_path / "m").iterdir()) == []


def test_a_full_disk_is_one_clear_error_and_publishes_nothing(exported, tmp_path, monkeypatch):
    import errno

    def full(folder, card):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(model_json, "write_model_json", full)
    with pytest.raises(KftError, match=re.escape(
            f"Could not write the export to {tmp_path / 'm'}: No space left on device; nothing "
            "was published (the next export takes version 1).")):
        kft.export.serving(exported.image_model, tmp_path, name="m", labels=LABELS)
    assert list((tmp_path / "m").iterdir()) == []


_KILLED_EXPORT = """
import os, signal, sys
import kft.export
from kft.export import model_json
from tests.helpers.tiny_models import tiny_image_model

base, point = sys.argv[1:3]

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

rename = os.rename
if point == "saved-model-written":  # model.json not yet
    model_json.write_model_json = kill
elif point == "before-rename":
    os.rename = kill
elif point == "after-rename":
    os.rename = lambda *args: (rename(*args), kill())
kft.export.serving(tiny_image_model(3, 16), base, name="m")
"""


@pytest.mark.slow
def test_a_kill_at_any_point_of_an_export_leaves_only_complete_versions(exported, tmp_path):
    from tests.helpers.process import kill_points

    points = ["saved-model-written", "before-rename", "after-rename"]
    for point in points:
        kft.export.serving(exported.image_model, tmp_path / point, name="m", labels=LABELS)
    kill_points(_KILLED_EXPORT, [tmp_path / point for point in points], points)

    for point in points:
        folder = tmp_path / point / "m"
        published = versions.versions(folder)
        assert published == ([1, 2] if point == "after-rename" else [1]), point
        for version in published:
            # Complete: TF loads it and its model card is there.
            assert (folder / str(version) / "model.json").is_file(), (point, version)
            assert "serving_default" in tf.saved_model.load(
                str(folder / str(version))).signatures
        # What a killed export leaves is hidden: no integer name, so TF Serving skips it.
        hidden = [entry.name for entry in folder.iterdir() if not entry.name.isdigit()]
        assert all(name.startswith(".") for name in hidden), point
        assert versions.next_version(folder) == published[-1] + 1


def test_publish_version_renames_only_complete_folders(tmp_path):
    folder = versions.model_dir(tmp_path, "m")
    assert not folder.exists()

    def write(path):
        assert path.parent == folder and path.name.startswith(".")
        assert versions.versions(folder) == []  # Nothing visible while writing.
        (path / "file").write_text("done")

    published = versions.publish_version(folder, None, write)
    assert published == folder / "1" and (published / "file").read_text() == "done"
    assert oct(published.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("name", ["", "../up", ".hidden", "a/b", "with space"])
def test_bad_model_names_are_refused(tmp_path, name):
    with pytest.raises(KftError, match="cannot be a TF Serving model name"):
        versions.model_dir(tmp_path, name)


@pytest.mark.parametrize("version", [0, -1, "2", 1.5, True])
def test_bad_versions_are_refused(tmp_path, version):
    with pytest.raises(KftError, match="version must be a positive integer"):
        versions.check_version(tmp_path, version)


def test_unsupported_models_and_options_give_clear_errors(exported, tmp_path):
    model = exported.image_model
    with pytest.raises(KftError, match="2 labels for a model with 3 output classes"):
        kft.export.serving(model, tmp_path, labels=["a", "b"])
    with pytest.raises(KftError, match=r"quantize='int4' is not supported; use None or 'int8'"):
        kft.export.serving(model, tmp_path, quantize="int4")
    with pytest.raises(KftError, match="needs representative_data"):
        kft.export.serving(model, tmp_path, quantize="int8")
    with pytest.raises(KftError, match="only used with quantize='int8'"):
        kft.export.serving(model, tmp_path, representative_data=np.zeros((1, SIZE, SIZE, 3)))
    a, b = keras.Input((4,)), keras.Input((4,))
    two_inputs = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Add()([a, b])))
    with pytest.raises(KftError, match="has 2 inputs and 1 outputs"):
        kft.export.serving(two_inputs, tmp_path)
    flat = keras.Model(a, keras.layers.Dense(2)(a), name="flat")
    with pytest.raises(KftError, match=r"takes float32 input of shape \(batch, 4\)"):
        kft.export.serving(flat, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_keras_hub_bert_with_its_tokenizer_serves_raw_strings(tmp_path):
    import keras_hub

    words = ["good", "bad", "film", "plot", "great", "awful", "a", "the", "acting"]
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        keras_hub.models.BertTokenizer(vocabulary=vocabulary, lowercase=True), sequence_length=8
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=8,
    )
    inputs = keras.Input(shape=(), dtype="string", name="text")
    pooled = backbone(preprocessor(inputs))["pooled_output"]
    outputs = keras.layers.Dense(2, activation="softmax", name="head_dense")(pooled)
    model = keras.Model(inputs, outputs, name="tiny_bert")
    sentences = ["a good film", "The plot was AWFUL", "great acting", "unknown words here"]

    path = kft.export.serving(model, tmp_path / "models", labels=["neg", "pos"])
    # int8 rebuilds the BERT layers but must keep the tokenizer, whose
    # vocabulary is an asset that a config cannot rebuild.
    int8_path = kft.export.serving(model, tmp_path / "models", labels=["neg", "pos"],
                                   quantize="int8")
    served = _serve([
        {"export": str(p), "signature": "serving_default", "argument": "text", "strings": sentences}
        for p in (path, int8_path)
    ], tmp_path, tensorflow_text=True)
    assert served["modules"] == []
    expected = model.predict(tf.constant(sentences), verbose=0)
    _assert_answers(served["results"][0], expected, ["neg", "pos"])
    np.testing.assert_allclose(served["results"][1]["probabilities"], expected, atol=0.02)
    report = json.loads((int8_path / "model.json").read_text())["quantization"]
    assert report["int8_saved_model"]["quantized_layers"] >= 7  # Embeddings, attention, FFN, head.


def test_a_token_classifier_serves_tags_per_word(tiny_bert_dir, tmp_path):
    from kft.models.token_classifier import predict_words, token_classifier

    keras.utils.set_random_seed(0)
    model = token_classifier(tiny_bert_dir, ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"],
                             sequence_length=6)
    # The second sentence is longer than the sequence: its last words get "O".
    sentences = ["alice lives in paris", "bob works at acme in london today", "paris"]
    path = kft.export.serving(model, tmp_path / "models")
    assert json.loads((path / "model.json").read_text())["task"] == "token_classification"
    (served,) = _serve([{"export": str(path), "signature": "serving_default",
                         "argument": "sentences", "strings": sentences}],
                       tmp_path, tensorflow_text=True)["results"]
    expected = predict_words(model, sentences)
    assert served["num_words"] == [4, 7, 1]
    assert [tags[:count] for tags, count in zip(served["tags"], served["num_words"])] == expected
    assert served["tags"][1][4:] == ["O"] * 3  # no piece of theirs fits the sequence
    assert served["tags"][2][1:] == [""] * 6  # padding past the sentence's one word
    with pytest.raises(KftError, match="export a token classifier in float"):
        kft.export.serving(model, tmp_path / "models", quantize="int8")


def test_an_export_is_quiet_unless_verbose(exported, tmp_path, capsys):
    kft.export.serving(exported.image_model, tmp_path, name="m", labels=LABELS)
    kft.export.onnx(exported.image_model, tmp_path / "onnx", labels=LABELS)
    assert capsys.readouterr().out == ""
