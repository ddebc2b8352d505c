"""What frozen layers cost: head-only training vs full fine-tuning, same run.

Frozen layers compute no weight gradients and need no optimizer slots. This
prints the median training-step time of head-only training (backbone frozen)
as a ratio of full fine-tuning, for the same model and batch, measured in the
same process, alternating the two so drift hits both; plus the optimizer's
slot count in each mode.

Run: `python bench/frozen_cost.py [--backbone mobilenetv3small] [--image-size 96]`
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kft.freezing import freeze  # noqa: E402
from kft.freezing import unfreeze  # noqa: E402
from kft.models.vision import image_classifier  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        # Logs hold tensors; reading one waits for the step to finish.
        float(logs["loss"])
        self.times.append(time.perf_counter() - self._start)


def measure(model, mode, data, steps, warmup):
    if mode == "full":
        unfreeze(model, train_bn=True)
    else:
        freeze(model)
        unfreeze(model, "head")
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    timer = StepTimer()
    model.fit(data, epochs=1, steps_per_epoch=warmup + steps, verbose=0, shuffle=False,
              callbacks=[timer])
    slots = len(model.optimizer.variables)
    return statistics.median(timer.times[warmup:]), slots, len(model.trainable_variables)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv3small")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = image_classifier(args.backbone, 10, weights=None, image_size=args.image_size)
    rng = np.random.default_rng(0)
    size = args.image_size
    x = rng.integers(0, 256, size=(args.batch_size * 4, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=(args.batch_size * 4,)).astype("int32")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch_size).cache().repeat()

    results = {"full": [], "head": []}
    for _ in range(args.rounds):
        for mode in ("full", "head"):
            step, slots, trainable = measure(model, mode, data, args.steps, args.warmup)
            results[mode].append((step, slots, trainable))

    print(f"model: {args.backbone}, weights=None, {size}x{size}, batch {args.batch_size}, "
          f"{args.rounds} alternating rounds of {args.steps} timed steps")
    for mode, label in (("full", "full fine-tuning"), ("head", "head only, frozen backbone")):
        step = statistics.median(r[0] for r in results[mode])
        _, slots, trainable = results[mode][-1]
        print(f"  {label:28s} median step {step * 1000:8.1f} ms   trainable variables "
              f"{trainable:4d}   optimizer variables {slots:4d}")
    full = statistics.median(r[0] for r in results["full"])
    head = statistics.median(r[0] for r in results["head"])
    print(f"  head-only / full step time: {head / full:.3f} ({full / head:.1f}x faster)")


if __name__ == "__main__":
    main()
