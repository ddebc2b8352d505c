"""Post-training int8 quantization, and what it costs, as measured.

Two int8 artifacts come out of one float model:

- the SavedModel, through Keras' `model.quantize("int8")`: int8 weights with
  per-channel scales and dynamically quantized activations. Keras quantizes
  `Dense`, `EinsumDense` and `Embedding` layers only: all-MiniLM-L6-v2 went
  from 93.9 to 27.1 MB, EfficientNet-Lite0 from 15.20 to 15.18 MB (its
  convolutions stay float32).
- a TFLite file, fully int8 (convolutions included), with activation ranges
  calibrated on training images (image models only: TFLite's builtin ops
  cannot hold a string tokenizer). EfficientNet-Lite0: 4.00 MB, against
  13.51 MB as float TFLite (bench/quantization.py).

The report compares sizes on disk and validation accuracy of each artifact,
run the way it will be served.
"""

import tempfile

import keras
import numpy as np

from kft.export import saved_model
from kft.export import tflite

TFLITE_FILE = "model_int8.tflite"
# The layer types Keras' int8 mode implements (keras-hub's ReversibleEmbedding
# is an Embedding).
INT8_LAYERS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)


def quantize_int8(model):
    """Quantizes `model` in place with Keras' int8 mode.

    Args:
        model: a built float Keras model (not the user's: it changes).

    Returns:
        The names of the layers that now hold int8 weights.
    """
    model.quantize("int8", filters=_quantizable)
    return [
        layer.name for layer in model._flatten_layers()
        if getattr(layer, "quantization_mode", None) == "int8"
    ]


def quantization_report(float_model, int8_model, labels, version_dir, quantized_layers,
                        calibration=None, validation=None):
    """Measures the float and int8 artifacts, and writes the int8 TFLite file.

    Args:
        float_model: the float model the int8 one came from.
        int8_model: its Keras int8 copy, already exported to `version_dir`.
        labels: the class names.
        version_dir: the (staging) version folder holding the int8 SavedModel;
            the TFLite file is written there too.
        quantized_layers: what `quantize_int8` returned.
        calibration: `[N, H, W, C]` training images for TFLite, or `None` for
            a text model (no TFLite file).
        validation: `(inputs, labels)` arrays, or `None` to report sizes only.

    Returns:
        A JSON-ready dict: `float_saved_model`, `int8_saved_model` and
        `int8_tflite` entries with `bytes` and, given validation data,
        `val_accuracy` (and `agreement`: the fraction of top classes equal to
        the float model's).
    """
    inputs, targets = validation if validation is not None else (None, None)
    with tempfile.TemporaryDirectory(prefix="kft-float-export-") as float_dir:
        saved_model.write_saved_model(float_model, labels, float_dir)
        float_entry = {"bytes": saved_model.saved_model_bytes(float_dir)}
        float_probabilities = None
        if inputs is not None:
            float_probabilities = saved_model.predict(float_dir, inputs)
            float_entry["val_accuracy"] = _accuracy(float_probabilities, targets)

    int8_entry = {
        "bytes": saved_model.saved_model_bytes(version_dir),
        "quantized_layers": len(quantized_layers),
    }
    if inputs is not None:
        int8_entry.update(_scores(saved_model.predict(version_dir, inputs), targets,
                                  float_probabilities))
    report = {
        "mode": "int8",
        "validation_examples": None if inputs is None else int(len(inputs)),
        "float_saved_model": float_entry,
        "int8_saved_model": int8_entry,
        "int8_tflite": None,
    }
    if calibration is not None:
        path = version_dir / TFLITE_FILE
        tflite_entry = {
            "file": TFLITE_FILE,
            "bytes": tflite.write_int8_tflite(float_model, path, calibration),
            "calibration_examples": int(len(calibration)),
        }
        if inputs is not None:
            tflite_entry.update(_scores(tflite.predict(path, inputs), targets,
                                        float_probabilities))
        report["int8_tflite"] = tflite_entry
    return report


def _quantizable(layer):
    # Explicit, because Keras otherwise tries every layer: it warns for each
    # type it cannot quantize and fails on never-built sublayers (the
    # StringLookup inside a TextVectorization).
    return (isinstance(layer, INT8_LAYERS) and layer.built
            and getattr(layer, "quantization_mode", None) is None)


def format_report(report):
    """The report as a few aligned lines for the console."""
    lines = ["artifact             size        val_accuracy"]
    rows = [("float SavedModel", report["float_saved_model"]),
            ("int8 SavedModel", report["int8_saved_model"]),
            ("int8 TFLite", report["int8_tflite"])]
    for name, entry in rows:
        if entry is None:
            continue
        accuracy = entry.get("val_accuracy")
        shown = "not measured" if accuracy is None else f"{accuracy:.4f}"
        lines.append(f"{name:<20} {_megabytes(entry['bytes']):>9}   {shown}")
    return "\n".join(lines)


def _scores(probabilities, targets, float_probabilities):
    return {
        "val_accuracy": _accuracy(probabilities, targets),
        "agreement": float(np.mean(
            probabilities.argmax(-1) == float_probabilities.argmax(-1)
        )),
    }


def _accuracy(probabilities, targets):
    return float(np.mean(probabilities.argmax(-1) == targets))


def _megabytes(size):
    return f"{size / 1e6:.2f} MB"
