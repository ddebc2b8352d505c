"""LoRA fine-tuning of all-MiniLM-L6-v2 on review sentences: kft against stock keras-hub.

One task, run once per system, each system in a fresh process of its own (so
peak memory, tracing and stalls are that system's alone), one after the
other in the same invocation:

- Task: all-MiniLM-L6-v2 (kft's short name `"minilm"`, read from a PyPI
  package), a new 2-class head, LoRA rank 8 on the attention query and value
  projections, 2,400 UCI review sentences for training and 600 for test
  (`kft.data.datasets.sentiment_sentences`, split per class, seed 0; no
  validation set), sequence length 64, batch 32, 3 epochs, AdamW 5e-4
  (weight decay 0.01) with 6% linear warmup then linear decay to 0.
- `stock`: keras-hub alone, the way its guides fine-tune a classifier:
  `TextClassifier.from_preset(path, num_classes=2, preprocessor=
  TextClassifierPreprocessor.from_preset(path, sequence_length=64))`,
  `backbone.enable_lora(rank=8)`, `model.fit` on a shuffled `tf.data`
  pipeline of raw strings (keras-hub maps its preprocessor over it), AdamW
  with a warmup/linear-decay `LearningRateSchedule` written on top of Keras;
  the same sentences as kft's (taken from kft's loader, nothing else).
  keras-hub's LoRA is not the task's LoRA, and the figures carry that:
  `enable_lora` has no alpha (Keras then uses alpha = rank: the update is
  scaled by 1.0, not 16/8 = 2.0), no dropout, and it treats the
  `EinsumDense` query/value kernels (384 x 12 heads x 32) per head, so its A
  matrix is 384 x 12 x 8: about 6x the adapter parameters of rank-8 LoRA on
  the 384 x 384 projection (compare the "trainable parameters" row). It
  trains the same layers otherwise (query and value of every block, whose
  biases keras-hub also leaves trainable: Keras' `enable_lora` freezes only
  the kernel; the classification head trains, the pooler does not). Its
  AdamW decays every trainable weight, biases included; kft's skips biases
  and norms.
- `kft`: kft's default path as a user runs it: `kft.runs.runner.run` on
  `recipes/sentiment.py` with the task set through `--set`-style overrides
  (`method=lora`, `lora_rank=8`, `lora_alpha=16`, `lora_dropout=0.1`,
  `sequence_length=64`, `validation_split=0`, `test_split`, `limit`,
  `epochs`, `lr`, `warmup=0.06`, `weight_decay=0.01`, `baseline=false`).
  It writes its run directory (checkpoint every epoch, history, TensorBoard,
  final evaluation) into a temporary folder, as a real run does; those costs
  are kft's and are measured. Whatever kft's pipeline does to go faster
  (length bucketing, ...) shows up here through that path, unchanged.
- `peft` (Hugging Face PEFT on PyTorch, the usual reference) is named but
  not measured yet: `--systems peft` says why (`NOT_YET`).

A Keras callback (`TrainingClock`) is added to each system's `fit` (for kft
through the recipe's `callbacks` hook, after kft's own callbacks) and times
every step from `on_train_batch_begin` to `on_train_batch_end`.

Run: `python bench/text_lora.py` (about 10-15 minutes on this project's
2-core CPU machine for both systems, more on shared cores; `--json results.json`
keeps every figure, with each epoch's stall and its parts).
Quick look: `python bench/text_lora.py --train-size 96 --test-size 64 --epochs 1`
(about a minute; its figures mean nothing).

The table (one column per system, then kft/stock):

- train examples/s (median step): examples per step / the median step
  time over every step of the run; the steady speed, stalls left out.
- train wall (N epochs): from `fit`'s `on_train_begin` to its
  `on_train_end`, tracing, stalls and per-epoch callbacks (kft's
  checkpoints) included; model building and data loading not.
- worst stall: for each epoch, its wall time minus its steps times the
  median step (the first epoch's includes tracing the train function), and
  the time from the last step's end to the end of `fit`; the worst of
  these, with where most of it went (before the epoch's first step, its
  first step, slower steps, between steps, after its last step). The next
  row leaves out the first step's tracing (its time over the median), so
  a stall at the start of a later epoch is not hidden behind it.
- setup before the first step: from the worker's start (imports done) to
  the first step: data, model, LoRA, compile (for kft also its run
  directory).
- peak memory: `VmHWM` of the worker process (its own peak resident set;
  not `ru_maxrss`, which Linux carries over from the forked parent).
- inference examples/s: `model.predict` on the raw test strings at batch
  64, timed on the second call (the first traces).
- test accuracy: argmax of that prediction against the test labels.
- trainable parameters: what the optimizer updates.
"""

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = pathlib.Path(__file__).resolve().parents[1]
SENTIMENT_RECIPE = REPO / "recipes" / "sentiment.py"
SYSTEMS = ("stock", "kft")
# Named by --systems but not measured yet, with the reason.
NOT_YET = {
    "peft": "Hugging Face PEFT needs torch, and PyPI's Linux torch wheel pulls the CUDA "
            "packages (torch 2.14.1: about 3 GB of wheels with cuDNN, cuBLAS, NCCL, triton, ...); "
            "PyPI has no CPU-only wheel, and this benchmark installs from PyPI only.",
}


@dataclasses.dataclass
class Task:
    """The fine-tuning task every system runs; the flags set some fields."""

    model: str = "minilm"
    train_size: int = 2400
    test_size: int = 600
    seed: int = 0
    epochs: int = 3
    batch_size: int = 32
    sequence_length: int = 64
    lr: float = 5e-4
    warmup: float = 0.06
    weight_decay: float = 0.01
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.1
    head_dropout: float = 0.1
    predict_batch_size: int = 64


# ---------------------------------------------------------------- the data


def split_options(task):
    """`sentiment_sentences.text_data` options that give the task's split.

    The train and test sets are drawn from the 3,000 sentences per class:
    `limit` picks `train_size + test_size` of them (seeded) unless that is
    all of them, and `test_split` holds `test_size` of those out. Per-class
    rounding can move one sentence between the two; the table shows the
    sizes each system actually got.
    """
    from kft.data.datasets import sentiment_sentences

    available = len(sentiment_sentences.load_rows()[0])
    total = task.train_size + task.test_size
    if total > available:
        raise SystemExit(f"--train-size + --test-size is {total}, but there are only "
                         f"{available} sentences.")
    return dict(limit=total if total < available else None, validation_split=0.0,
                test_split=task.test_size / total, batch_size=task.batch_size, seed=task.seed)


def task_sentences(task):
    """The task's `(train_texts, train_labels), (test_texts, test_labels)` as lists.

    They come from kft's dataset loader, the same call the `kft` system's
    recipe makes, so both systems see the same sentences; only the texts
    and labels are taken, every system builds its own input pipeline.
    """
    from kft.data.datasets import sentiment_sentences

    data = sentiment_sentences.text_data(**split_options(task))
    return unbatched(data.train), unbatched(data.test)


def unbatched(dataset):
    """`(texts, labels)` lists from a dataset of `(string batch, label batch)`."""
    texts, labels = [], []
    for text, label in dataset.unbatch().as_numpy_iterator():
        if not isinstance(text, bytes):
            raise TypeError(f"Expected raw strings from kft's dataset, got {type(text).__name__}.")
        texts.append(text.decode("utf-8"))
        labels.append(int(label))
    return texts, labels


# ---------------------------------------------------------------- measuring


def training_clock():
    """A `TrainingClock` (a Keras callback), built once Keras is imported."""
    import keras

    class TrainingClock(keras.callbacks.Callback):
        """Records when `fit`, each epoch and each step begin and end."""

        def __init__(self):
            super().__init__()
            self.train_begin = None
            self.train_end = None
            self.epochs = []  # {"begin", "end", "steps": [(begin, end), ...]}
            self._step_begin = None

        def on_train_begin(self, logs=None):
            self.train_begin = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append({"begin": time.perf_counter(), "end": None, "steps": []})

        def on_train_batch_begin(self, batch, logs=None):
            self._step_begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.epochs[-1]["steps"].append((self._step_begin, time.perf_counter()))

        def on_epoch_end(self, epoch, logs=None):
            self.epochs[-1]["end"] = time.perf_counter()

        def on_train_end(self, logs=None):
            self.train_end = time.perf_counter()

    return TrainingClock()


def training_times(clock, started):
    """Step, epoch and stall figures from a `TrainingClock` after `fit`.

    Args:
        clock: the `TrainingClock` that watched `fit`.
        started: `time.perf_counter()` when the worker began (imports done).

    Returns:
        A dict: `median_step`, `steps_per_epoch`, `train_wall`,
        `setup_seconds`, `epochs` (per epoch: wall, steps, stall and its
        parts), `fit_tail` (last step's end to the end of `fit`),
        `worst_stall` (`seconds`, `where`) and `worst_stall_without_tracing`
        (the same with the first step's excess over the median left out).
    """
    durations = [end - begin for epoch in clock.epochs for begin, end in epoch["steps"]]
    median = statistics.median(durations)
    epochs = []
    for number, epoch in enumerate(clock.epochs, start=1):
        steps = epoch["steps"]
        lengths = [end - begin for begin, end in steps]
        first = "its first step (tracing)" if number == 1 else "its first step"
        parts = {
            "before its first step": steps[0][0] - epoch["begin"],
            first: lengths[0] - median,
            "slower steps": sum(max(0.0, d - median) for d in lengths[1:]),
            "between steps": sum(b[0] - a[1] for a, b in zip(steps, steps[1:])),
            "after its last step": epoch["end"] - steps[-1][1],
        }
        wall = epoch["end"] - epoch["begin"]
        stall = wall - len(steps) * median
        tracing = max(0.0, parts[first]) if number == 1 else 0.0
        epochs.append({
            "epoch": number, "wall": wall, "steps": len(steps), "stall": stall,
            "stall_without_tracing": stall - tracing, "parts": parts,
        })
    last_step_end = clock.epochs[-1]["steps"][-1][1]
    fit_tail = clock.train_end - last_step_end
    candidates = [(e["stall"], f"epoch {e['epoch']}, mostly {_largest(e['parts'])}")
                  for e in epochs]
    candidates.append((fit_tail, "after the last step, until fit ends"))
    worst = max(candidates)
    untraced = max([e["stall_without_tracing"] for e in epochs] + [fit_tail])
    return {
        "median_step": median,
        "steps_per_epoch": epochs[0]["steps"],
        "train_wall": clock.train_end - clock.train_begin,
        "setup_seconds": clock.epochs[0]["steps"][0][0] - started,
        "epochs": epochs,
        "fit_tail": fit_tail,
        "worst_stall": {"seconds": worst[0], "where": worst[1]},
        "worst_stall_without_tracing": untraced,
    }


def _largest(parts):
    name = max(parts, key=parts.get)
    return f"{name}: {parts[name]:.1f} s"


def peak_memory_bytes():
    """This process's peak resident set (`VmHWM` in /proc/self/status), in bytes."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?).")


def inference_figures(predict, texts, labels):
    """Test accuracy and examples/s of `predict` (texts -> scores), second call timed."""
    import numpy as np

    scores = np.asarray(predict(texts))  # warm-up: traces
    started = time.perf_counter()
    predict(texts)
    seconds = time.perf_counter() - started
    accuracy = float(np.mean(scores.argmax(axis=-1) == np.asarray(labels)))
    return {"test_accuracy": accuracy, "inference_examples_per_second": len(texts) / seconds}


def keras_predictor(model, task):
    """`texts -> scores` through `model.predict` on raw strings."""
    import numpy as np

    def predict(texts):
        return model.predict(np.asarray(texts, dtype=object), batch_size=task.predict_batch_size,
                             verbose=0)

    return predict


def trainable_parameters(model):
    """Number of weights in `model.trainable_weights`."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))


# ---------------------------------------------------------------- the systems


def train_stock(task, started):
    """keras-hub alone: its TextClassifier, its `enable_lora`, `model.fit`."""
    import keras
    import keras_hub
    import numpy as np
    import tensorflow as tf

    from kft.models.weights import text_presets

    (train_texts, train_labels), (test_texts, test_labels) = task_sentences(task)
    keras.utils.set_random_seed(task.seed)
    path = text_presets.resolve(task.model)  # only to find the folder
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        path, sequence_length=task.sequence_length)
    model = keras_hub.models.TextClassifier.from_preset(
        path, num_classes=2, preprocessor=preprocessor, dropout=task.head_dropout)
    model.backbone.enable_lora(rank=task.lora_rank)  # the head stays trainable

    train = (tf.data.Dataset.from_tensor_slices((train_texts, np.array(train_labels, "int32")))
             .shuffle(len(train_texts), seed=task.seed, reshuffle_each_iteration=True)
             .batch(task.batch_size)
             .prefetch(tf.data.AUTOTUNE))
    total_steps = math.ceil(len(train_texts) / task.batch_size) * task.epochs
    schedule = linear_warmup_decay(task.lr, total_steps, round(task.warmup * total_steps))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=task.weight_decay),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["sparse_categorical_accuracy"],
    )
    clock = training_clock()
    model.fit(train, epochs=task.epochs, callbacks=[clock], verbose=0)
    return {
        **training_times(clock, started),
        **inference_figures(keras_predictor(model, task), test_texts, test_labels),
        "train_examples": len(train_texts),
        "test_examples": len(test_texts),
        "trainable_parameters": trainable_parameters(model),
    }


def linear_warmup_decay(peak, total_steps, warmup_steps):
    """A Keras schedule: linear warmup from 0 to `peak`, then linear decay to 0.

    Keras has none built in (`PolynomialDecay` has no warmup, `CosineDecay`
    decays along a cosine), so a stock user writes this one.
    """
    import keras
    from keras import ops

    class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            step = ops.cast(step, "float32")
            warming = peak * step / max(warmup_steps, 1)
            progress = ops.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1),
                                0.0, 1.0)
            return ops.where(step < warmup_steps, warming, peak * (1.0 - progress))

        def get_config(self):
            return {}

    return LinearWarmupDecay()


def kft_overrides(task):
    """The `--set` values that make `recipes/sentiment.py` run the task."""
    split = split_options(task)
    return {
        "model": task.model,
        "method": "lora",
        "lora_rank": task.lora_rank,
        "lora_alpha": task.lora_alpha,
        "lora_dropout": task.lora_dropout,
        "dropout": task.head_dropout,
        "sequence_length": task.sequence_length,
        "batch_size": task.batch_size,
        "validation_split": split["validation_split"],
        "test_split": split["test_split"],
        "limit": split["limit"] or 0,
        "epochs": task.epochs,
        "lr": task.lr,
        "warmup": task.warmup,
        "weight_decay": task.weight_decay,
        "baseline": False,
        "seed": task.seed,
    }


def train_kft(task, started):
    """kft's normal run path: `kft.runs.runner.run` on `recipes/sentiment.py`."""
    from kft.runs import recipe as recipes
    from kft.runs import runner

    recipe = recipes.load(SENTIMENT_RECIPE)
    clock = training_clock()
    own = recipe.callbacks
    recipe = dataclasses.replace(recipe, callbacks=lambda p: [*(own(p) if own else []), clock])
    with tempfile.TemporaryDirectory(prefix="kft-bench-") as output:
        result = runner.run(recipe, overrides=kft_overrides(task), verbose=False, output=output)
        run_seconds = time.perf_counter() - started
    (train_texts, _), (test_texts, test_labels) = task_sentences(task)
    return {
        **training_times(clock, started),
        **inference_figures(keras_predictor(result.model, task), test_texts, test_labels),
        "train_examples": len(train_texts),
        "test_examples": len(test_texts),
        "trainable_parameters": trainable_parameters(result.model),
        "kft_reported_test_accuracy": result.metrics["final"].get("test_accuracy"),
        "kft_run_seconds": run_seconds,
    }


# ---------------------------------------------------------------- the worker


def worker_main(system, task):
    """Runs `system` on `task` in this (fresh) process; prints one JSON line."""
    import keras  # noqa: F401  (imported before the clock starts)

    import kft  # noqa: F401

    started = time.perf_counter()
    train = {"stock": train_stock, "kft": train_kft}[system]
    figures = train(task, started)
    figures["peak_memory_bytes"] = peak_memory_bytes()
    figures["worker_seconds"] = time.perf_counter() - started
    print(json.dumps(figures))


def run_system(system, task):
    """Runs `system` in a fresh Python process; returns its figures (a dict)."""
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", system,
               "--task", json.dumps(dataclasses.asdict(task))]
    began = time.perf_counter()
    print(f"{system}: training ...", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        print(done.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"{system}: the worker failed (exit status {done.returncode}).")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"{system}: done in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return figures


# ---------------------------------------------------------------- the report


def conditions():
    """What the figures were measured on: CPUs, load, versions, date, commit."""
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    cpu_model = next((line.split(":", 1)[1].strip()
                      for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "versions": {name: version(name) for name in
                     ("tensorflow", "keras", "keras-hub", "tensorflow-text", "kft")},
        "kft_commit": commit or "unknown",
    }


ROWS = [
    # (label, figure(result) -> number, format)
    ("train examples/s (median step)",
     lambda r: r["train_examples"] / r["steps_per_epoch"] / r["median_step"], "{:.1f}"),
    ("train wall, all {epochs} epoch(s) (s)", lambda r: r["train_wall"], "{:.1f}"),
    ("worst stall (s)", lambda r: r["worst_stall"]["seconds"], "{:.1f}"),
    ("worst stall, tracing left out (s)", lambda r: r["worst_stall_without_tracing"], "{:.1f}"),
    ("setup before the first step (s)", lambda r: r["setup_seconds"], "{:.1f}"),
    ("peak memory (GiB)", lambda r: r["peak_memory_bytes"] / 2**30, "{:.2f}"),
    ("inference examples/s (batch {predict_batch_size})",
     lambda r: r["inference_examples_per_second"], "{:.1f}"),
    ("test accuracy", lambda r: r["test_accuracy"], "{:.3f}"),
    ("trainable parameters", lambda r: r["trainable_parameters"], "{:,}"),
]


def report(task, results, where):
    """The markdown table (systems as columns, then kft/stock), stalls and conditions."""
    systems = list(results)
    ratio = "stock" in results and "kft" in results
    header = ["", *systems] + (["kft/stock"] if ratio else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, figure, fmt in ROWS:
        values = [figure(results[s]) for s in systems]
        cells = [label.format(**dataclasses.asdict(task)), *(fmt.format(v) for v in values)]
        if ratio:
            stock, kft = figure(results["stock"]), figure(results["kft"])
            cells.append(f"{kft / stock:.2f}" if stock else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for system in systems:
        r = results[system]
        stalls = ", ".join(f"epoch {e['epoch']} {e['stall']:.1f} s" for e in r["epochs"])
        lines.append(f"- {system}: worst stall {r['worst_stall']['seconds']:.1f} s "
                     f"({r['worst_stall']['where']}); stalls per epoch: {stalls}; "
                     f"after the last step {r['fit_tail']:.1f} s; "
                     f"{r['train_examples']} train / {r['test_examples']} test sentences, "
                     f"{r['steps_per_epoch']} steps per epoch, median step "
                     f"{r['median_step'] * 1000:.0f} ms.")
    lines.append("")
    lines.append(
        f"Task: {task.model} LoRA r={task.lora_rank} (kft: alpha {task.lora_alpha:g}, dropout "
        f"{task.lora_dropout:g}; stock keras-hub: alpha = rank, no dropout) on query and value "
        f"+ new 2-class head, sequence length {task.sequence_length}, batch {task.batch_size}, "
        f"{task.epochs} epoch(s), AdamW {task.lr:g} (wd {task.weight_decay:g}), "
        f"{task.warmup:.0%} warmup, linear decay, seed {task.seed}.")
    versions = ", ".join(f"{k} {v}" for k, v in where["versions"].items())
    lines.append(
        f"Measured {where['date']} on {where['cpus_usable']} of {where['cpus']} CPUs "
        f"({where['cpu_model']}), load average at start {where['load_average'][0]}; "
        f"Python {where['python']}, {versions}; kft commit {where['kft_commit']}.")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Task()
    parser.add_argument("--systems", default="stock,kft",
                        help=f"comma-separated, in order, from {', '.join(SYSTEMS)} "
                        f"({', '.join(NOT_YET)}: not measured yet)")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--train-size", type=int, default=defaults.train_size)
    parser.add_argument("--test-size", type=int, default=defaults.test_size)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.systems.split(",")
    for name in names:
        if name in NOT_YET:
            parser.error(f"system {name} is not measured yet: {NOT_YET[name]}")
    unknown = [s for s in names if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {', '.join(unknown)}; use some of {', '.join(SYSTEMS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, Task(**json.loads(args.task)))
        return
    task = Task(train_size=args.train_size, test_size=args.test_size, epochs=args.epochs,
                seed=args.seed)
    where = conditions()
    results = {system: run_system(system, task) for system in args.systems.split(",")}
    print(report(task, results, where))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"task": dataclasses.asdict(task), "conditions": where, "results": results},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
