"""quantize="int8": a Keras int8 SavedModel and a full-int8 TFLite file, measured against float."""

import json
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import kft.export
from kft.export import tflite
from tests.helpers.tiny_models import trained_quantization_subject

LABELS = ["dark", "mid", "bright"]


def _weights(model):
    return {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    model, (train_x, train_y), (val_x, val_y) = trained_quantization_subject(len(LABELS), 16)
    before = _weights(model)
    base = tmp_path_factory.mktemp("quantized")
    # Training batches as kft.data delivers them: (uint8 images, labels).
    batches = tf.data.Dataset.from_tensor_slices((train_x, train_y)).batch(16)
    path = kft.export.serving(model, base, name="tiny", labels=LABELS, quantize="int8",
                              representative_data=batches, validation_data=(val_x, val_y))
    card = json.loads((path / "model.json").read_text())
    return types.SimpleNamespace(model=model, before=before, path=path, report=card["quantization"],
                                 val_x=val_x, val_y=val_y)


def test_report_measures_float_and_int8_artifacts(quantized):
    report = quantized.report
    float_probabilities = quantized.model.predict(quantized.val_x, verbose=0)
    keras_accuracy = float(np.mean(float_probabilities.argmax(-1) == quantized.val_y))
    assert report["mode"] == "int8" and report["validation_examples"] == 30
    assert report["float_saved_model"]["val_accuracy"] == pytest.approx(keras_accuracy, abs=1e-9)
    assert keras_accuracy > 0.6  # A trained model, so "after" has something to lose.
    # head_dense only: Keras leaves convolutions float.
    assert report["int8_saved_model"]["quantized_layers"] == 1
    tflite_entry = report["int8_tflite"]
    assert tflite_entry["file"] == "model_int8.tflite"
    assert tflite_entry["bytes"] == (quantized.path / "model_int8.tflite").stat().st_size
    assert tflite_entry["calibration_examples"] == 96
    for entry in (report["int8_saved_model"], tflite_entry):
        assert 0.0 <= entry["val_accuracy"] <= 1.0 and entry["agreement"] >= 0.9


def test_int8_saved_model_holds_int8_weights_and_answers_close_to_float(quantized):
    loaded = tf.saved_model.load(str(quantized.path))
    int8_shapes = [tuple(v.shape) for v in loaded.variables if v.dtype == tf.int8]
    assert int8_shapes == [(8, 3)]  # head_dense's kernel.
    served = loaded.signatures["predict_images"](images=tf.constant(quantized.val_x))
    expected = quantized.model.predict(quantized.val_x, verbose=0)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=0.02)
    assert not np.array_equal(served["probabilities"].numpy(), expected)


def test_tflite_file_is_full_int8_with_uint8_images_in(quantized):
    interpreter = tflite._interpreter(quantized.path / "model_int8.tflite")
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    int8_shapes = {tuple(t["shape"]) for t in interpreter.get_tensor_details()
                   if t["dtype"] == np.int8}
    assert {(4, 3, 3, 3), (8, 3, 3, 4), (3, 8)} <= int8_shapes  # Both convolutions and the dense.
    probabilities = tflite.predict(quantized.path / "model_int8.tflite", quantized.val_x)
    expected = quantized.model.predict(quantized.val_x, verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=0.1)
    accuracy = float(np.mean(probabilities.argmax(-1) == quantized.val_y))
    assert accuracy == pytest.approx(quantized.report["int8_tflite"]["val_accuracy"], abs=1e-9)


def test_the_users_model_is_not_quantized(quantized):
    assert quantized.model.get_layer("head_dense").quantization_mode is None
    for path, value in _weights(quantized.model).items():
        np.testing.assert_array_equal(value, quantized.before[path])


def test_text_model_gets_int8_embedding_and_dense_but_no_tflite(tmp_path, capsys):
    sentences = np.array(["good film", "bad film", "good plot", "bad plot"])
    vectorize = keras.layers.TextVectorization(max_tokens=8, output_sequence_length=3)
    vectorize.adapt(sentences)
    inputs = keras.Input(shape=(), dtype="string")
    x = keras.layers.Embedding(8, 4)(vectorize(inputs))
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inputs, outputs, name="text")
    path = kft.export.serving(model, tmp_path, quantize="int8",
                              validation_data=(sentences, np.array([1, 0, 1, 0])),
                                  verbose=True)
    report = json.loads((path / "model.json").read_text())["quantization"]
    assert report["int8_saved_model"]["quantized_layers"] == 2
    assert report["int8_tflite"] is None and report["validation_examples"] == 4
    printed = capsys.readouterr().out
    assert "int8 SavedModel" in printed and "int8 TFLite" not in printed
    loaded = tf.saved_model.load(str(path))
    served = loaded.signatures["serving_default"](text=tf.constant(sentences))
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               model.predict(tf.constant(sentences), verbose=0), atol=0.02)
