"""TFLite files for image classifiers: float, and full int8 calibrated on training images.

In the int8 file weights and activations are int8 (TFLite's builtin int8
kernels only, no float fallback); activation ranges come from a
representative set of training images. Both files take raw `uint8 [batch, H, W, C]` images, as the
Keras model does (the model's own input scaling is inside), and returns
float32 `probabilities`.
"""

import contextlib
import pathlib
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

from kft.errors import KftError


def write_int8_tflite(model, path, calibration_images):
    """Converts an image classifier to an int8 TFLite file.

    Args:
        model: a float Keras image classifier (one image input).
        path: the `.tflite` file to write.
        calibration_images: `[N, H, W, C]` training images in the model's
            input dtype; a few hundred set the activation ranges.

    Returns:
        The file's size in bytes.
    """
    return _write_tflite(model, path, calibration_images)


def write_float_tflite(model, path):
    """Converts an image classifier to a float32 TFLite file (no quantization).

    Args:
        model: a float Keras image classifier (one image input).
        path: the `.tflite` file to write.

    Returns:
        The file's size in bytes.
    """
    return _write_tflite(model, path, None)


def _write_tflite(model, path, calibration_images):
    input_shape = tuple(model.inputs[0].shape[1:])
    dtype = keras.backend.standardize_dtype(model.inputs[0].dtype)
    with tempfile.TemporaryDirectory(prefix="kft-tflite-") as source:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default",
            lambda images: {"probabilities": model(images, training=False)},
            [tf.TensorSpec([None, *input_shape], dtype, name="images")],
        )
        archive.write_out(source, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(source)
        if calibration_images is not None:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

            def representative_dataset():
                for image in calibration_images:
                    yield {"images": image[None]}

            converter.representative_dataset = representative_dataset
        mode = "float" if calibration_images is None else "full int8"
        try:
            with _quiet_interpreter():  # The converter calibrates with it.
                content = converter.convert()
        except Exception as error:  # The converter raises several unrelated types.
            raise KftError(
                f"TFLite could not convert {model.name!r} to {mode}: {error}"
            ) from error
    pathlib.Path(path).write_bytes(content)
    return len(content)


def predict(path, images, batch_size=32):
    """Class probabilities from a TFLite classifier file.

    Args:
        path: a file written by `write_int8_tflite`.
        images: `[N, H, W, C]` images in the file's input dtype.
        batch_size: images per invocation.

    Returns:
        A float32 array `[N, classes]`.
    """
    interpreter = _interpreter(path)
    input_index = interpreter.get_input_details()[0]["index"]
    output_index = interpreter.get_output_details()[0]["index"]
    outputs, allocated = [], None
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        if batch.shape != allocated:
            interpreter.resize_tensor_input(input_index, batch.shape)
            interpreter.allocate_tensors()
            allocated = batch.shape
        interpreter.set_tensor(input_index, batch)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_tensor(output_index)))
    return np.concatenate(outputs)


def _interpreter(path):
    with _quiet_interpreter():
        return tf.lite.Interpreter(model_path=str(path))


@contextlib.contextmanager
def _quiet_interpreter():
    # tf.lite.Interpreter warns that it moves to the ai_edge_litert package;
    # TF 2.21 still ships it, and kft adds no dependency for it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
        yield
