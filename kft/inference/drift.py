"""`kft drift`: do new inputs still look like the data a run was trained on?

At the end of a run, `store_reference` embeds a seeded sample of the
training data and of the held-out (validation) data with the final model's
penultimate layer (the input of its last layer with weights: the pooled
features a classifier's head reads) and saves them, with the model's
predictions, as `RUN_DIR/drift_reference.npz` (and a readable summary,
`drift_reference.json`).

`drift(RUN_DIR, NEW)` embeds the new inputs the same way and compares them
with the training embeddings:

- distance: the sliced Wasserstein-1 (Earth Mover's) distance. Embeddings
  are standardised with the training sample's mean and deviation, projected
  onto `projections` seeded random unit directions, and the 1-D Wasserstein
  distance between the new and the training values (what
  `scipy.stats.wasserstein_distance` computes, here for every direction
  at once) is averaged over the directions. A 1-D Wasserstein
  distance needs no binning and no density estimate, works for any sample
  sizes, and grows with any change of a projected distribution (location,
  spread, shape); averaged over random directions it sees changes in every
  direction of the embedding space, not only along its axes, at the cost of
  one sort per direction.
- threshold: calibrated by bootstrap. The distance of a finite sample to
  the training sample is never zero, and the model knows its training
  examples better than unseen ones, so "how far is normal" is measured on
  data it has not seen either: the held-out sample. `bootstrap` resamples
  (with replacement) of the held-out embeddings, of the new data's size,
  are compared with the training sample exactly as the new data are (the
  distance of two samples shrinks as they grow, so only equal sizes
  compare); the threshold is their `quantile` (0.99 by default: about one
  false alarm in a hundred checks of data from the training distribution).
  A resample larger than the held-out sample repeats its points: with
  fewer distinct points it tends to be farther from the training sample
  than a fresh sample of that size, so the threshold errs towards fewer
  false alarms; a bigger held-out sample (`samples`) makes it sharper.
- class shares: the share of each class among the model's predictions, on
  the new data and on the training sample, and their difference. The same
  bootstrap gives the largest shift a resample of held-out data shows
  (`share_threshold`); classes beyond it are marked. The verdict is the
  distance's alone: a change of class mix moves the embeddings too.

Each check writes `RUN_DIR/drift/<data>-<time>/report.json` (an earlier one
is never overwritten). A run directory without a reference (trained by an
older kft) gets one computed from the run's recipe copy and saved first.

Example:
```python
from kft.inference.drift import drift

found = drift("runs/cats_dogs-20260101-120000", "photos_this_week/")
found.drifted, found.distance, found.threshold, found.report_file
```
"""

import dataclasses
import datetime
import hashlib
import heapq
import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from kft.data import images as image_data
from kft.errors import KftError
from kft.inference import inputs as input_files
from kft.inference.run_model import load
from kft.internal import json_text
from kft.runs.run_directory import RunDirectory
from kft.runs.run_directory import new_directory

REFERENCE_FILE = "drift_reference.npz"
SUMMARY_FILE = "drift_reference.json"
FOLDER = "drift"
REPORT_FILE = "report.json"
# Embeddings per sample (training, held-out) stored at the end of a run: 1,000
# of each cost a Fashion-MNIST-sized EfficientNet-Lite0 run 33 s on 2 cores,
# 300 about a third of that, and a bootstrap over 300 held-out points still
# calibrates checks of a few hundred new inputs.
DEFAULT_SAMPLES = 300
DEFAULT_QUANTILE = 0.99
DEFAULT_PROJECTIONS = 64
DEFAULT_BOOTSTRAP = 500
# New inputs checked at most (a seeded subset beyond): the distance is then
# already far more precise than the held-out sample that calibrates it.
DEFAULT_MAX_INPUTS = 5000
# Images decoded per chunk: bounded memory on folders of any size.
_CHUNK = 512
# Examples read (not embedded) to draw the seeded sample from, per sampled
# example: the whole set for most data, a bounded read for huge streams.
_POOL_FACTOR = 10
# Fewer held-out examples than this cannot calibrate: the training sample
# is split in two instead.
_MIN_HELD_OUT = 2
_FORMAT = 1

# How the held-out sample was obtained (`DriftReference.calibration`).
FROM_VALIDATION = "validation"
FROM_TEST = "test"
FROM_TRAINING_SPLIT = "training split"
# The data tasks (`kft.data.Data.task`) with a reference: classifiers.
CLASSIFIER_TASKS = ("classification", "image_classification", "text_classification")
# Where the reference came from (`Drift.reference_source`).
FROM_RUN = "run"
FROM_RECIPE = "recipe"


@dataclasses.dataclass
class DriftReference:
    """Embeddings of a run's training and held-out data, to compare new data with.

    Attributes:
        train: float32 `[n, d]` penultimate-layer embeddings of the training sample.
        held_out: float32 `[m, d]` embeddings of the held-out sample (calibration).
        train_predictions: the model's outputs `[n, classes]` on the training sample.
        held_out_predictions: its outputs `[m, classes]` on the held-out sample.
        labels: the class names, in output order.
        calibration: where the held-out sample came from: `"validation"`,
            `"test"` or `"training split"` (the data had no held-out set:
            half the training sample).
        layer: the layer whose input the embeddings are (`"outputs"` where the
            model's graph could not be split and its outputs are compared).
        multi_label: class shares count outputs >= 0.5, not the top class.
        seed: the sampling seed.
        created: when it was computed (ISO 8601).
    """

    train: np.ndarray
    held_out: np.ndarray
    train_predictions: np.ndarray
    held_out_predictions: np.ndarray
    labels: list
    calibration: str
    layer: str
    multi_label: bool = False
    seed: int = 0
    created: str = ""

    @property
    def dim(self):
        return int(self.train.shape[1])

    def summary(self):
        """What `drift_reference.json` holds: everything but the arrays."""
        return {
            "format": _FORMAT, "created": self.created, "layer": self.layer, "dim": self.dim,
            "train_samples": len(self.train), "held_out_samples": len(self.held_out),
            "calibration": self.calibration, "labels": list(self.labels),
            "multi_label": self.multi_label, "seed": self.seed,
            "train_shares": _shares(self.train_predictions, self.multi_label),
        }

    def save(self, run_dir):
        """Writes `drift_reference.npz` and `drift_reference.json` into `run_dir`
        (each atomically; the npz holds the summary too, so it is complete alone).

        Returns:
            The npz file's `pathlib.Path`.
        """
        folder = RunDirectory(run_dir)
        target = folder.path / REFERENCE_FILE
        arrays = dict(train=self.train, held_out=self.held_out,
                      train_predictions=self.train_predictions,
                      held_out_predictions=self.held_out_predictions,
                      summary=np.array(json_text.dumps(self.summary())))

        def write(tmp):
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)

        folder.publish(target, write)
        folder.write_json(SUMMARY_FILE, self.summary())
        return target

    @classmethod
    def load(cls, run_dir):
        """The reference saved in `run_dir`, or `None` where it holds none.

        Raises:
            KftError: the file is unreadable or not a drift reference.
        """
        path = pathlib.Path(run_dir) / REFERENCE_FILE
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as saved:
                arrays = {key: saved[key] for key in saved.files}
            summary = json.loads(str(arrays.pop("summary")))
            if summary.get("format") != _FORMAT:
                raise ValueError(f"format {summary.get('format')!r}, this kft reads {_FORMAT}")
            return cls(**arrays, labels=summary["labels"], calibration=summary["calibration"],
                       layer=summary["layer"], multi_label=summary["multi_label"],
                       seed=summary["seed"], created=summary["created"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise KftError(f"{path} is not a readable drift reference ({error}); delete it and "
                           "kft drift computes a new one from the run's recipe.") from error


@dataclasses.dataclass
class ClassShare:
    """One class's share of the model's predictions.

    Attributes:
        label: the class.
        reference: its share on the training sample.
        new: its share on the new data.
        shift: `new - reference`.
    """

    label: str
    reference: float
    new: float

    @property
    def shift(self):
        return self.new - self.reference


@dataclasses.dataclass
class Drift:
    """What `drift` measured, decided and wrote.

    Attributes:
        drifted: the verdict: `distance > threshold`.
        distance: the sliced Wasserstein-1 distance of the new embeddings to
            the training sample's (standardised units).
        threshold: the `quantile` of the bootstrap distances.
        p_value: the share of bootstrap distances at least `distance`
            (add-one corrected): small means unlike held-out data.
        quantile: the quantile the threshold is.
        samples: how many new inputs were embedded.
        inputs: how many were given (more than `samples` when some could
            not be read, or beyond `max_inputs`).
        shares: a `ClassShare` per class.
        share_threshold: the `quantile` of the largest class-share shift of
            the bootstrap resamples.
        reference_source: `"run"` (saved by the run) or `"recipe"` (computed
            now from the run's recipe copy).
        reference: the `DriftReference` compared with.
        reference_file: the run's `drift_reference.npz`, or `None` where a
            reference computed now could not be saved (a read-only run).
        bootstrap_size: the size of each bootstrap resample.
        bootstrap_distances: the distance of each resample, ascending.
        projections: how many random directions were averaged.
        folder: the new folder (`RUN_DIR/drift/<data>-<time>/`).
        report_file: its `report.json`.
        data: the inputs checked (paths as given).
        skipped: image files that could not be read.
    """

    drifted: bool
    distance: float
    threshold: float
    p_value: float
    quantile: float
    samples: int
    shares: list
    share_threshold: float
    reference_source: str
    reference: DriftReference
    bootstrap_size: int
    bootstrap_distances: np.ndarray
    projections: int
    inputs: int = 0
    reference_file: pathlib.Path = None
    folder: pathlib.Path = None
    report_file: pathlib.Path = None
    data: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)

    @property
    def verdict(self):
        return "drift" if self.drifted else "no drift"

    @property
    def largest_share_shift(self):
        return max((abs(share.shift) for share in self.shares), default=0.0)

    def as_dict(self):
        reference = self.reference
        return {
            "verdict": self.verdict,
            "drifted": self.drifted,
            "distance": self.distance,
            "threshold": self.threshold,
            "p_value": self.p_value,
            "quantile": self.quantile,
            "samples": self.samples,
            "inputs": self.inputs,
            "data": [path if path == "-" else str(pathlib.Path(path).resolve())
                     for path in map(str, self.data)],
            "skipped": self.skipped,
            "largest_share_shift": self.largest_share_shift,
            "share_threshold": self.share_threshold,
            "shares": [{"label": share.label, "reference": share.reference, "new": share.new,
                        "shift": share.shift} for share in self.shares],
            "method": {
                "distance": "sliced Wasserstein-1 of standardised embeddings",
                "projections": self.projections,
                "bootstrap": len(self.bootstrap_distances),
                "bootstrap_size": self.bootstrap_size,
                "bootstrap_distances": {
                    "min": float(self.bootstrap_distances.min()),
                    "median": float(np.median(self.bootstrap_distances)),
                    "max": float(self.bootstrap_distances.max()),
                },
            },
            "reference": {
                "source": self.reference_source, "layer": reference.layer,
                "dim": reference.dim, "train_samples": len(reference.train),
                "held_out_samples": len(reference.held_out),
                "calibration": reference.calibration, "created": reference.created,
            },
        }

    def table(self):
        """`kft drift`'s lines: the figures, the verdict, the class shares."""
        from kft.console import table

        reference = self.reference
        where = ("the input of its last layer " + reference.layer
                 if reference.layer != "outputs" else "its outputs")
        lines = [
            (f"{self.samples} new inputs against {len(reference.train)} training and "
             f"{len(reference.held_out)} {reference.calibration} embeddings "
             f"({where}, {reference.dim} dims)"),
            f"Distance (sliced Wasserstein):  {self.distance:.4f}",
            (f"Threshold (q{self.quantile:g} of {len(self.bootstrap_distances)} "
             f"{reference.calibration} resamples of {self.bootstrap_size}):  "
             f"{self.threshold:.4f}"),
            (f"Verdict: {self.verdict.upper()} (distance {self.distance:.4f} "
             f"{'>' if self.drifted else '<='} threshold {self.threshold:.4f}, "
             f"p = {self.p_value:.3f})"),
            "",
        ]
        rows = [[share.label, f"{share.reference:.3f}", f"{share.new:.3f}",
                 f"{share.shift:+.3f}{'*' if abs(share.shift) > self.share_threshold else ''}"]
                for share in self.shares]
        lines.append(table(["class", "train share", "new share", "shift"], rows))
        if any(abs(share.shift) > self.share_threshold for share in self.shares):
            lines.append(f"* beyond the shift of {self.share_threshold:.3f} that "
                         f"q{self.quantile:g} of the {reference.calibration} resamples reach")
        if self.report_file is not None:
            lines.append(f"Report: {self.report_file}")
        return "\n".join(lines)


def embedding_model(model):
    """A model with `model`'s inputs and two outputs: the penultimate embeddings
    and the model's (first) output.

    The embeddings are the input of the last layer with weights on the path
    to the output (the classifier's Dense: for kft's image models the pooled
    backbone features after `head_pool`, for keras-hub text classifiers the
    pooled encoder output); weightless layers after it (an activation, a
    float32 cast) are passed over. A model whose graph cannot be walked (a
    subclassed model) compares its outputs instead.

    Args:
        model: a Keras model.

    Returns:
        `(embedding_model, layer_name)`; the name is `"outputs"` when the
        outputs are used.

    Example:
    ```python
    extractor, layer = embedding_model(model)  # layer: "head_dense"
    features, probabilities = extractor.predict(images)
    ```
    """
    output = model.outputs[0] if getattr(model, "outputs", None) else None
    tensor = output
    while tensor is not None:
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            break
        operation, node_index, _ = history
        nodes = getattr(operation, "_inbound_nodes", [])
        if node_index >= len(nodes):
            break
        parents = list(nodes[node_index].input_tensors)
        if len(parents) != 1:
            break
        if operation.weights:
            if len(parents[0].shape) < 2 or any(
                    parents[0] is given for given in keras.tree.flatten(model.inputs)):
                break  # a single layer (or nested model) on the inputs: no features of its own
            return keras.Model(model.input, [parents[0], output],
                               name=f"{model.name}_embeddings"), operation.name
        tensor = parents[0]
    if output is None:
        raise KftError(f"Model {model.name!r} has no outputs to compare.")
    return keras.Model(model.input, [output, output], name=f"{model.name}_outputs"), "outputs"


def compute_reference(model, data, samples=DEFAULT_SAMPLES, seed=0, batch_size=32):
    """Embeds a seeded sample of a run's training and held-out data.

    Args:
        model: the trained model.
        data: what the recipe's `data` returns (`kft.data.Data`): `train`
            batches and, for calibration, `validation` (else `test`) batches.
        samples: the most examples to embed from each set.
        seed: seeds the sample.
        batch_size: examples per forward pass.

    Returns:
        A `DriftReference`.

    Raises:
        KftError: data of another task than classification, or too few
            training examples (fewer than 2, or 4 without a held-out set).

    Example:
    ```python
    reference = compute_reference(model, kft.data.images.load("photos/", (224, 224)))
    reference.train.shape, reference.calibration  # (300, 1280), "validation"
    ```
    """
    task = getattr(data, "task", "classification")
    if task not in CLASSIFIER_TASKS:
        raise KftError(f"kft drift compares a classifier's embeddings; this is {task} data.")
    samples = _positive(samples, "samples")
    extractor, layer = embedding_model(model)
    train_inputs = _sample(data.train, samples, seed)
    held_out_inputs, calibration = None, FROM_TRAINING_SPLIT
    for name in (FROM_VALIDATION, FROM_TEST):
        batches = getattr(data, name, None)
        if batches is not None:
            held_out_inputs = _sample(batches, samples, seed)
            if held_out_inputs is not None and _count(held_out_inputs) >= _MIN_HELD_OUT:
                calibration = name
                break
            held_out_inputs = None
    least = 2 if held_out_inputs is not None else 2 * _MIN_HELD_OUT
    if train_inputs is None or _count(train_inputs) < least:
        raise _TooFew(f"The training data holds fewer than {least} examples: too few for a "
                      "drift reference.")
    train, train_predictions = _embed(model, extractor, train_inputs, batch_size)
    if held_out_inputs is None:
        # No held-out set: half the training sample calibrates against the other half.
        order = np.random.default_rng(seed).permutation(len(train))
        half, rest = order[: len(order) // 2], order[len(order) // 2:]
        held_out, held_out_predictions = train[half], train_predictions[half]
        train, train_predictions = train[rest], train_predictions[rest]
    else:
        held_out, held_out_predictions = _embed(model, extractor, held_out_inputs, batch_size)
    return DriftReference(
        train=train, held_out=held_out, train_predictions=train_predictions,
        held_out_predictions=held_out_predictions, labels=[str(c) for c in data.class_names],
        calibration=calibration, layer=layer, multi_label=bool(getattr(data, "multi_label", False)),
        seed=int(seed), created=datetime.datetime.now().isoformat(timespec="seconds"),
    )


def store_reference(model, data, run_dir, samples=DEFAULT_SAMPLES, seed=0, batch_size=32):
    """Saves the drift reference of a finished run into its run directory.

    The runner calls it at the end of every run, so `kft drift` finds
    `drift_reference.npz` there. Runs of other tasks than classification
    (token tagging, causal LMs), and runs with too few training examples to
    sample, get none (`kft drift` then says why).

    Args:
        model: the final model.
        data: the run's data (`recipe.build_data`'s result).
        run_dir: the run directory (a path or a `RunDirectory`).
        samples: the most examples embedded per set (training, held-out).
        seed: seeds the sample.
        batch_size: examples per forward pass.

    Returns:
        The written `drift_reference.npz` path, or `None` where none was written.

    Example:
    ```python
    kft.inference.store_reference(model, data, "runs/cats_dogs-20260101-120000")
    ```
    """
    if getattr(data, "task", "classification") not in CLASSIFIER_TASKS:
        return None
    if isinstance(run_dir, RunDirectory):
        run_dir = run_dir.path
    try:
        reference = compute_reference(model, data, samples, seed, batch_size)
    except _TooFew:
        return None
    return reference.save(run_dir)


def drift(run, data, column="text", texts=(), quantile=DEFAULT_QUANTILE,
          projections=DEFAULT_PROJECTIONS, bootstrap=DEFAULT_BOOTSTRAP, seed=0, batch_size=32,
          recipe=None, samples=DEFAULT_SAMPLES, max_inputs=DEFAULT_MAX_INPUTS):
    """Checks whether new inputs drifted from a run's training data.

    Args:
        run: a finished run directory or a `RunModel` (`kft.inference.load`)
            of an image or text classifier.
        data: what `kft predict` reads, one path or a list: image files and
            folders for an image run; `.txt` files (a text per line),
            CSV/TSV/JSON Lines files (their `column`) or `-` for a text run.
        column: the column of table files holding the text.
        texts: texts given directly (text runs).
        quantile: the bootstrap quantile that is the threshold, in (0.5, 1].
        projections: random directions of the sliced distance.
        bootstrap: held-out resamples calibrating the threshold.
        seed: seeds the directions and the resamples.
        batch_size: inputs per forward pass.
        recipe: the run's recipe (a `kft.Recipe` or its file), only used when
            the run directory holds no `drift_reference.npz`; defaults to
            its copy `recipe.py`.
        samples: without a saved reference: the most examples embedded per set.
        max_inputs: the most new inputs embedded; of more, a seeded random
            subset is (`Drift.inputs` says how many were given).

    Returns:
        A `Drift`; its `report_file` is written.

    Raises:
        KftError: missing inputs or inputs of the wrong kind, a token run,
            a run with neither a reference nor a recipe copy, a reference
            that does not fit the model, bad options.

    Example:
    ```python
    found = kft.inference.drift("runs/cats_dogs-20260101-120000", "photos_this_week/")
    if found.drifted:
        print(found.distance, ">", found.threshold, found.report_file)
    ```
    """
    try:
        quantile = float(quantile)
    except (TypeError, ValueError):
        raise KftError(f"quantile must be a number in (0.5, 1], got {quantile!r}.") from None
    if not 0.5 < quantile <= 1.0:
        raise KftError(f"quantile must be in (0.5, 1], got {quantile:g}.")
    projections = _positive(projections, "projections")
    bootstrap = _positive(bootstrap, "bootstrap")
    batch_size = _positive(batch_size, "batch_size")
    max_inputs = _positive(max_inputs, "max_inputs")
    run = load(run)
    if run.kind not in ("image", "text"):
        what = "a token-tagging" if run.kind == "token" else f"a {run.kind}"
        raise KftError(f"kft drift compares a classifier's embeddings; {run.run_dir} is "
                       f"{what} run.")
    given = [data] if isinstance(data, (str, pathlib.PurePath)) else list(data or ())
    # Listed (and so checked) before anything is computed or written.
    new_inputs = _list_inputs(run, given, column, texts)
    count = len(new_inputs)
    if count > max_inputs:
        chosen = np.sort(np.random.default_rng(seed).choice(count, max_inputs, replace=False))
        new_inputs = [new_inputs[index] for index in chosen]

    reference, source = DriftReference.load(run.run_dir), FROM_RUN
    if reference is None:
        reference, source = _reference_from_recipe(run, recipe, samples, batch_size), FROM_RECIPE
    extractor, layer = embedding_model(run.model)
    if list(reference.labels) != list(run.labels) or layer != reference.layer:
        raise KftError(
            f"{run.run_dir / REFERENCE_FILE} was made for a model with classes "
            f"{list(reference.labels)[:10]} (layer {reference.layer}), not this one "
            f"({run.labels[:10]}, layer {layer}); delete it and kft drift computes a new one.")
    embeddings, predictions, skipped = _embed_inputs(run, extractor, new_inputs, batch_size)
    if embeddings.shape[1] != reference.dim:
        raise KftError(f"{run.run_dir / REFERENCE_FILE} holds {reference.dim}-dim embeddings, "
                       f"the model gives {embeddings.shape[1]}: delete it and rerun.")

    found = compare(reference, embeddings, predictions, quantile=quantile,
                    projections=projections, bootstrap=bootstrap, seed=seed)
    found.reference_source, found.data, found.skipped = source, [str(p) for p in given], skipped
    found.inputs = count
    saved = run.run_dir / REFERENCE_FILE
    found.reference_file = saved if saved.is_file() else None
    first = pathlib.Path(given[0]) if given and str(given[0]) != "-" else None
    name = (first.stem or first.name) if first is not None else "texts"
    found.folder = new_directory(name, run.run_dir / FOLDER)
    found.report_file = found.folder / REPORT_FILE
    RunDirectory(found.folder).write_json(REPORT_FILE, {
        "run_dir": str(run.run_dir.resolve()),
        "created": datetime.datetime.now().isoformat(timespec="seconds"), **found.as_dict()})
    return found


def compare(reference, embeddings, predictions, quantile=DEFAULT_QUANTILE,
            projections=DEFAULT_PROJECTIONS, bootstrap=DEFAULT_BOOTSTRAP, seed=0):
    """Compares new embeddings with a reference: distance, threshold, verdict, shares.

    Args:
        reference: a `DriftReference`.
        embeddings: `[n, d]` embeddings of the new inputs.
        predictions: the model's `[n, classes]` outputs on them.
        quantile, projections, bootstrap, seed: see `drift`.

    Returns:
        A `Drift` (nothing written; `folder` and `report_file` are `None`).

    Example:
    ```python
    found = compare(DriftReference.load(run_dir), embeddings, probabilities)
    found.distance, found.threshold, found.drifted
    ```
    """
    embeddings = np.asarray(embeddings, np.float64)
    if embeddings.ndim != 2 or not len(embeddings):
        raise KftError("No new embeddings to compare.")
    train = np.asarray(reference.train, np.float64)
    mean, deviation = train.mean(axis=0), train.std(axis=0)
    deviation = np.where(deviation > 1e-12, deviation, 1.0)  # constant units: raw differences
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((train.shape[1], projections))
    directions /= np.linalg.norm(directions, axis=0, keepdims=True)

    def projected(values):
        return ((np.asarray(values, np.float64) - mean) / deviation) @ directions

    train_values, held_out_values = projected(train), projected(reference.held_out)
    distance = sliced_wasserstein(projected(embeddings), train_values)

    train_shares = np.array(_shares(reference.train_predictions, reference.multi_label))
    size = len(embeddings)
    distances, share_shifts = np.empty(bootstrap), np.empty(bootstrap)
    for index in range(bootstrap):
        chosen = rng.integers(0, len(held_out_values), size)
        distances[index] = sliced_wasserstein(held_out_values[chosen], train_values)
        shares = np.array(_shares(reference.held_out_predictions[chosen], reference.multi_label))
        share_shifts[index] = np.abs(shares - train_shares).max()
    threshold = float(np.quantile(distances, quantile))
    new_shares = _shares(predictions, reference.multi_label)
    return Drift(
        drifted=bool(distance > threshold), distance=distance, threshold=threshold,
        p_value=float((1 + np.sum(distances >= distance)) / (bootstrap + 1)),
        quantile=quantile, samples=len(embeddings), inputs=len(embeddings),
        shares=[ClassShare(str(label), float(old), float(new))
                for label, old, new in zip(reference.labels, train_shares, new_shares)],
        share_threshold=float(np.quantile(share_shifts, quantile)),
        reference_source=FROM_RUN, reference=reference, bootstrap_size=size,
        bootstrap_distances=np.sort(distances), projections=projections,
    )


def sliced_wasserstein(a, b):
    """The mean over columns of the 1-D Wasserstein-1 distance between `a[:, k]`
    and `b[:, k]`: the sliced distance of two samples already projected.

    Per column it is what `scipy.stats.wasserstein_distance(a[:, k], b[:, k])`
    computes (the area between the two empirical distribution functions),
    for all columns in one pass of sorts.

    Args:
        a: `[n, K]` projected values of one sample.
        b: `[m, K]` projected values of the other (any `m`).

    Returns:
        A float.

    Example:
    ```python
    sliced_wasserstein(np.zeros((5, 2)), np.ones((3, 2)))  # 1.0
    ```
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both = np.concatenate([a, b])
    order = np.argsort(both, axis=0, kind="stable")
    values = np.take_along_axis(both, order, axis=0)
    # Stepping through the sorted values, the difference of the two CDFs
    # rises by 1/n at a value of `a` and falls by 1/m at one of `b`.
    steps = np.where(order < len(a), 1.0 / len(a), -1.0 / len(b))
    gaps = np.diff(values, axis=0)
    return float(np.mean(np.sum(np.abs(np.cumsum(steps, axis=0)[:-1]) * gaps, axis=0)))


def _reference_from_recipe(run, recipe, samples, batch_size):
    """The reference the run would have saved, computed from its recipe's data
    (with the run's hyperparameters and seed) and saved into the run directory."""
    from kft.export.run_export import recipe_data
    from kft.export.run_export import run_files

    params = run_files(run.run_dir)[1]
    keras.utils.set_random_seed(int(params.get("seed", 0)))  # as the run did
    data = recipe_data(run.run_dir, params, recipe,
                       f"{run.run_dir} holds no {REFERENCE_FILE} (runs save it since kft "
                       "drift exists), so kft drift rebuilds the run's data")
    if list(data.class_names) != list(run.labels):
        raise KftError(
            f"The recipe's data has classes {list(data.class_names)[:10]}, the run's model "
            f"{run.labels[:10]}: is the training data still where params.json says?")
    reference = compute_reference(run.model, data, samples=samples,
                                  seed=int(params.get("seed", 0)), batch_size=batch_size)
    try:
        reference.save(run.run_dir)
    except KftError:
        pass  # a read-only run directory: the check goes on with the reference in memory
    return reference


def _list_inputs(run, given, column, texts):
    """The image files, or the texts, of the new inputs (as `kft predict` reads them)."""
    if run.kind == "image":
        if texts:
            raise KftError("This run classifies images: pass image files or folders, not texts.")
        if not given:
            raise KftError("Nothing to compare: pass image files or folders (--data).")
        return input_files.image_paths(given)
    if not given and not texts:
        raise KftError("Nothing to compare: pass text files, - for stdin, or texts (--data).")
    return input_files.texts(given, column=column, literal=texts)[0]


def _embed_inputs(run, extractor, inputs, batch_size):
    """`(embeddings, outputs, skipped files)` of the listed inputs; images are
    decoded a chunk at a time, and unreadable ones skipped."""
    if run.kind != "image":
        return (*_embed(run.model, extractor, np.array(inputs, dtype=object), batch_size), [])
    embedded, outputs, skipped = [], [], []
    for begin in range(0, len(inputs), _CHUNK):
        chunk = inputs[begin:begin + _CHUNK]
        pixels, readable = image_data.read_images(chunk, run.image_size)
        skipped += [str(path) for path, ok in zip(chunk, readable) if not ok]
        if readable.any():
            features, predicted = _embed(run.model, extractor, pixels[readable], batch_size)
            embedded.append(features)
            outputs.append(predicted)
    if not embedded:
        raise KftError(f"None of the {len(inputs)} image file(s) could be read.")
    return np.concatenate(embedded), np.concatenate(outputs), skipped


def _sample(batches, count, seed):
    """A seeded sample of at most `count` inputs of `batches`, or `None` if
    there are none.

    The examples kept are those with the smallest seeded hashes of their
    content, among the first `_POOL_FACTOR * count` read: the same examples
    whatever order the batches come in (training batches are reshuffled on
    every pass), a uniform sample of the whole set for most data, and a
    bounded read for huge streams.
    """
    kept, seen, limit = [], 0, _POOL_FACTOR * count
    salt = int(seed).to_bytes(8, "little", signed=True)
    for batch in batches:
        inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
        inputs = keras.tree.map_structure(np.asarray, inputs)
        for row in range(_count(inputs)):
            example = keras.tree.map_structure(lambda values, row=row: values[row], inputs)
            key = hashlib.blake2b(_content(example), digest_size=8, key=salt).digest()
            entry = (-int.from_bytes(key, "big"), seen, example)  # a max-heap of the smallest
            if len(kept) < count:
                heapq.heappush(kept, entry)
            elif entry[0] > kept[0][0]:
                heapq.heapreplace(kept, entry)
            seen += 1
            if seen >= limit:
                break
        if seen >= limit:
            break
    if not kept:
        return None
    examples = [entry[2] for entry in sorted(kept, key=lambda entry: (-entry[0], entry[1]))]
    return keras.tree.map_structure(lambda *rows: np.stack(rows), *examples)


def _content(example):
    """The bytes of one example (its arrays, or its texts)."""
    parts = []
    for value in keras.tree.flatten(example):
        value = np.asarray(value)
        if value.dtype == object:
            parts += [item if isinstance(item, bytes) else str(item).encode("utf-8")
                      for item in value.reshape(-1)]
        else:
            parts.append(value.tobytes())
    return b"\0".join(parts)


def _count(inputs):
    return len(keras.tree.flatten(inputs)[0])


def _embed(model, extractor, inputs, batch_size):
    """`(embeddings [n, d] float32, outputs [n, classes] float32)` of `inputs`.

    Batches run eagerly: a few thousand examples at most, where tracing a
    `predict` function (once per padded text width) would cost more than it
    saves.
    """
    from kft.model_tree import is_keras_hub_task

    # A keras-hub task tokenizes outside its layer graph, which the extractor is part of.
    preprocessor = getattr(model, "preprocessor", None) if is_keras_hub_task(model) else None
    embedded, outputs = [], []
    for begin in range(0, _count(inputs), batch_size):
        rows = slice(begin, begin + batch_size)
        batch = keras.tree.map_structure(
            lambda values, rows=rows: tf.convert_to_tensor(values[rows]), inputs)
        if preprocessor is not None:
            batch = preprocessor(batch)
        features, predicted = extractor(batch, training=False)
        embedded.append(keras.ops.convert_to_numpy(features).astype(np.float32))
        outputs.append(keras.ops.convert_to_numpy(predicted).astype(np.float32))
    embeddings, outputs = np.concatenate(embedded), np.concatenate(outputs)
    if embeddings.ndim > 2:  # per position or pixel: the mean over them
        embeddings = embeddings.reshape(len(embeddings), -1, embeddings.shape[-1]).mean(axis=1)
    return embeddings, outputs.reshape(len(outputs), -1)


def _shares(outputs, multi_label):
    """Each class's share of the predictions: of top classes, or of outputs >= 0.5."""
    outputs = np.asarray(outputs)
    if outputs.shape[1] == 1:  # one sigmoid unit: two classes
        positive = (outputs[:, 0] >= 0.5).mean() if len(outputs) else 0.0
        return [float(1 - positive), float(positive)]
    if not len(outputs):
        return [0.0] * outputs.shape[1]
    if multi_label:
        return [float(share) for share in (outputs >= 0.5).mean(axis=0)]
    counts = np.bincount(outputs.argmax(axis=1), minlength=outputs.shape[1])
    return [float(count) / len(outputs) for count in counts]


class _TooFew(KftError):
    """The data hold too few examples to sample a reference from."""


def _positive(value, name):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KftError(f"{name} must be a whole number >= 1, got {value!r}.")
    return value
