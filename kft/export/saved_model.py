"""Writing, measuring and running a serving SavedModel."""

import pathlib

import keras
import numpy as np
import tensorflow as tf

from kft.export.signatures import model_input
from kft.export.signatures import serving_endpoints

# The files TF Serving loads; model.json and the TFLite file beside them are
# not part of the SavedModel's size.
_SAVED_MODEL_PARTS = ("saved_model.pb", "variables", "assets", "fingerprint.pb")


def write_saved_model(model, labels, path):
    """Writes `model` with kft's serving signatures as a SavedModel.

    The graph holds only TensorFlow ops: kft's layers (and keras-hub's) are
    traced away, so serving needs neither installed.

    Args:
        model: a classifier (see `kft.export.signatures.model_input`).
        labels: the class names, in output order.
        path: the folder to write (created).
    """
    archive = _ServingArchive()
    archive.track(model)
    for name, function, signature in serving_endpoints(model, labels):
        archive.add_endpoint(name, function, signature)
    archive.write_out(str(path), verbose=False)


# keras.export.ExportArchive() returns an instance of its backend's archive
# class (TensorFlow's here), the class that does the tracking.
_BackendArchive = type(keras.export.ExportArchive())


class _ServingArchive(_BackendArchive):
    """A `keras.export.ExportArchive` that stores each weight once.

    `track` lists a layer's Keras variables while the traced endpoints
    capture the `tf.Variable`s inside them: two objects per weight, so the
    SavedModel held every weight twice (twice the size on disk and in TF
    Serving's memory; keras-team/keras#23553, open for Keras 3.15). Tracking
    the `tf.Variable`s themselves lets TensorFlow write each once.
    """

    def _backend_track_layer(self, layer):
        self._tf_trackable.variables += _tf_variables(layer.variables)
        self._tf_trackable.trainable_variables += _tf_variables(layer.trainable_variables)
        self._tf_trackable.non_trainable_variables += _tf_variables(
            layer.non_trainable_variables
        )


def _tf_variables(variables):
    # Outside an autocast scope a Keras variable's `value` is its tf.Variable.
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def saved_model_bytes(path):
    """Bytes on disk of the SavedModel in `path` (graph, variables, assets)."""
    total = 0
    for part in _SAVED_MODEL_PARTS:
        item = pathlib.Path(path) / part
        files = [item] if item.is_file() else item.rglob("*") if item.is_dir() else []
        total += sum(f.stat().st_size for f in files if f.is_file())
    return total


def predict(path, inputs, batch_size=64):
    """Class probabilities from the SavedModel in `path`, as a server computes them.

    Args:
        path: a folder written by `write_saved_model`.
        inputs: decoded images `[N, H, W, C]` (run through `predict_images`)
            or strings `[N]` (run through `serving_default`).
        batch_size: examples per call.

    Returns:
        A float32 array `[N, classes]`.
    """
    loaded = tf.saved_model.load(str(path))
    if "predict_images" in loaded.signatures:
        function, argument = loaded.signatures["predict_images"], "images"
    else:
        function, argument = loaded.signatures["serving_default"], "text"
    outputs = [
        function(**{argument: tf.constant(inputs[start:start + batch_size])})["probabilities"]
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate([output.numpy() for output in outputs])


def describe_signatures(model):
    """The signatures' inputs and outputs, for `model.json`."""
    spec = model_input(model)
    classes = model.outputs[0].shape[1]
    outputs = {
        "probabilities": f"float32 [batch, {classes}]",
        "class_index": "int64 [batch]",
        "label": "string [batch]",
    }
    if spec.kind == "text":
        return {"serving_default": {"inputs": {"text": "string [batch]"}, "outputs": outputs}}
    shape = ", ".join(str(d) for d in spec.shape)
    return {
        "serving_default": {"inputs": {"image_bytes": "string [batch]"}, "outputs": outputs},
        "predict_images": {
            "inputs": {"images": f"{spec.dtype} [batch, {shape}]"}, "outputs": outputs,
        },
    }
