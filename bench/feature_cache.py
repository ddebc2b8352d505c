"""Feature caching: epochs 2..N of head training with and without cached features.

Trains the head of a kft image classifier (backbone frozen, no augmentation)
on Fashion-MNIST twice from the same starting head: once through the whole
model every epoch, once on backbone features computed in one pass. Prints the
wall time of every epoch (the caching pass is counted in epoch 1), the
epochs 2..N total of each and their ratio, and both final validation
accuracies (the cached run's measured through the full model on raw images).

With `weights=None` a deep network's features vanish (MobileNetV3Small's are
~1e-10 with its initial BatchNorm statistics) and no head can learn from them,
so by default the BatchNorm statistics are first set from one batch of
training images (a data-dependent initialisation; the weights stay random).
`--weights imagenet --backbone efficientnet_lite0` uses real pretrained
weights from a registry package instead.

Run: `python bench/feature_cache.py [--backbone mobilenetv3small] [--epochs 5]`
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from kft.data.datasets import fashion_mnist  # noqa: E402
from kft.training.feature_cache import cache_features  # noqa: E402
from kft.training.feature_cache import can_cache  # noqa: E402
from kft.training.feature_cache import compile_head  # noqa: E402
from kft.training.feature_cache import split_at_head  # noqa: E402
from kft.freezing import Norms  # noqa: E402
from kft.freezing import freeze  # noqa: E402
from kft.freezing import unfreeze  # noqa: E402
from kft.models.vision import image_classifier  # noqa: E402


class EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.times.append(time.perf_counter() - self._start)


def calibrate_batch_norm(model, images):
    """Sets every BatchNorm's moving statistics to those of one batch."""
    unfreeze(model, Norms())
    layers = [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer, momentum in zip(layers, momenta):
        layer.momentum = momentum
    freeze(model, Norms())


def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--train-size", type=int, default=2000)
    parser.add_argument("--validation-size", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--weights", default=None, help="None (random) or imagenet")
    args = parser.parse_args()

    data = fashion_mnist.image_data(
        args.train_size, args.validation_size, image_size=args.image_size, batch_size=32
    )
    keras.utils.set_random_seed(0)
    model = image_classifier(args.backbone, 10, weights=args.weights, image_size=args.image_size)
    freeze(model)
    unfreeze(model, "head")
    if args.weights is None:
        calibrate_batch_norm(model, next(iter(data.train))[0])
    ok, reason = can_cache(model)
    print(f"can_cache: {ok}: {reason}")
    if not ok:
        return
    head_start = [w.numpy() for w in model.get_layer("head_dense").weights]

    keras.utils.set_random_seed(1)
    compile_model(model, args.learning_rate)
    plain_timer = EpochTimer()
    model.fit(data.train, validation_data=data.validation, epochs=args.epochs, verbose=0,
              shuffle=False, callbacks=[plain_timer])
    plain_accuracy = model.evaluate(data.validation, verbose=0, return_dict=True)["accuracy"]

    for weight, value in zip(model.get_layer("head_dense").weights, head_start):
        weight.assign(value)
    keras.utils.set_random_seed(1)
    start = time.perf_counter()
    features, head = split_at_head(model)
    train = cache_features(features, data.train, shuffle=True, seed=0)
    validation = cache_features(features, data.validation)
    caching = time.perf_counter() - start
    compile_model(model, args.learning_rate)  # a fresh optimizer, as in the first run
    compile_head(head, model)
    cached_timer = EpochTimer()
    head.fit(train, validation_data=validation, epochs=args.epochs, verbose=0,
             shuffle=False, callbacks=[cached_timer])
    cached_times = [cached_timer.times[0] + caching] + cached_timer.times[1:]
    cached_accuracy = model.evaluate(data.validation, verbose=0, return_dict=True)["accuracy"]

    print(f"model: {args.backbone}, weights={args.weights}, {args.image_size}x{args.image_size}, "
          f"Fashion-MNIST {data.num_train} train / {data.num_validation} validation, "
          f"batch 32, {args.epochs} epochs, feature shape {tuple(features.output.shape)}")
    print("  epoch wall time (s), with validation:")
    print("    through the model: " + " ".join(f"{t:7.2f}" for t in plain_timer.times))
    print("    cached features:   " + " ".join(f"{t:7.2f}" for t in cached_times)
          + f"   (epoch 1 includes the {caching:.2f} s caching pass)")
    plain_rest, cached_rest = sum(plain_timer.times[1:]), sum(cached_times[1:])
    print(f"  epochs 2..{args.epochs}: {plain_rest:.2f} s through the model, {cached_rest:.2f} s "
          f"cached: {plain_rest / cached_rest:.0f}x faster")
    print(f"  final validation accuracy: {plain_accuracy:.4f} through the model, "
          f"{cached_accuracy:.4f} cached (full model on raw images)")


if __name__ == "__main__":
    main()
