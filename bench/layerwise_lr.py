"""What per-layer learning rates cost: LayerwiseLR vs the plain optimizer, same run.

`kft.optimizers.LayerwiseLR` scales the learning rate per variable inside the
wrapped optimizer's update step. This prints the training-step time of a model
trained with `LayerwiseLR(optimizer, layer_decay=0.9)` as a ratio of the same
model trained with the plain optimizer, measured in the same process in
short alternating bursts so drift hits both. Times are this process's CPU
time (all threads), which load from other processes on a shared machine
disturbs far less than wall time. The optimizer update alone, on fixed
gradients, is timed the same way. Two pairs are measured: Adam
(rates only) and AdamW (rates plus per-variable decoupled weight decay that
skips biases and norms, against AdamW decaying everything).

Run: `python bench/layerwise_lr.py [--backbone mobilenetv3small] [--image-size 64]`
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kft.freezing import layer_groups  # noqa: E402
from kft.models.vision import image_classifier  # noqa: E402
from kft.optimizers import LayerwiseLR  # noqa: E402


def optimizer_for(kind, model):
    if kind == "adam":
        return keras.optimizers.Adam(1e-4)
    if kind == "adam+layerwise":
        return LayerwiseLR(keras.optimizers.Adam(1e-4), layer_decay=0.9, model=model)
    if kind == "adamw":
        return keras.optimizers.AdamW(1e-4, weight_decay=0.01)
    plain = keras.optimizers.AdamW(1e-4, weight_decay=0.01)
    return LayerwiseLR(plain, layer_decay=0.9, model=model)


def burst(model, x, y, steps):
    start = time.process_time()
    for _ in range(steps):
        # train_on_batch returns the loss as a number: the step has finished.
        model.train_on_batch(x, y)
    return (time.process_time() - start) / steps


def update_burst(update, steps):
    start = time.process_time()
    for _ in range(steps):
        update()
    # The last update's iteration count waits for every update to finish.
    float(update.optimizer.iterations.numpy())
    return (time.process_time() - start) / steps


def update_function(model):
    """The optimizer's update alone, on fixed gradients, as a tf.function."""
    variables = model.trainable_variables
    grads = [
        tf.random.stateless_normal(v.shape, seed=(0, i)) * 1e-3 for i, v in enumerate(variables)
    ]

    @tf.function
    def update():
        model.optimizer.apply(grads, variables)

    update.optimizer = model.optimizer
    return update


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed burst")
    parser.add_argument("--rounds", type=int, default=16)
    parser.add_argument("--jit-compile", action="store_true")
    args = parser.parse_args()

    size = args.image_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(args.batch_size, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=(args.batch_size,)).astype("int32")
    kinds = ("adam", "adam+layerwise", "adamw", "adamw+layerwise")
    models = {}
    for kind in kinds:
        keras.utils.set_random_seed(0)
        model = image_classifier(args.backbone, 10, weights=None, image_size=size)
        model.compile(
            optimizer=optimizer_for(kind, model),
            loss="sparse_categorical_crossentropy",
            jit_compile=args.jit_compile,
        )
        burst(model, x, y, 3)  # trace and warm up
        models[kind] = model

    # Round robin over short bursts: load from other processes hits every
    # kind alike, and each round's ratio compares neighbours in time.
    times = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
        for kind in kinds:
            times[kind].append(burst(models[kind], x, y, args.steps))

    updates = {kind: update_function(models[kind]) for kind in kinds}
    update_times = {kind: [] for kind in kinds}
    for kind in kinds:
        update_burst(updates[kind], 3)
    for _ in range(args.rounds):
        for kind in kinds:
            update_times[kind].append(update_burst(updates[kind], 4 * args.steps))

    model = models["adam"]
    print(
        f"model: {args.backbone}, weights=None, {size}x{size}, batch {args.batch_size}, "
        f"{len(model.trainable_variables)} trainable variables in "
        f"{len(layer_groups(model))} layer groups, jit_compile={args.jit_compile}, device: "
        f"{'GPU' if tf.config.list_physical_devices('GPU') else 'CPU'}"
    )
    print(f"{args.rounds} round-robin rounds of {args.steps}-step bursts")
    for kind in kinds:
        print(f"  {kind:16s} median step CPU time {statistics.median(times[kind]) * 1000:.1f} ms")
    for kind in kinds:
        update = statistics.median(update_times[kind]) * 1000
        print(f"  {kind:16s} median optimizer update alone, CPU time {update:.2f} ms")
    for what, measured in (("step time", times), ("update alone", update_times)):
        for plain in ("adam", "adamw"):
            ratios = [w / p for w, p in zip(measured[f"{plain}+layerwise"], measured[plain])]
            quartiles = statistics.quantiles(ratios, n=4)
            print(
                f"LayerwiseLR({plain}) / {plain} {what} (CPU time): "
                f"median {statistics.median(ratios):.3f} "
                f"(quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f})"
            )


if __name__ == "__main__":
    main()
