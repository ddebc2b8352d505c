"""The learning-rate range test (Smith 2015; fastai's `lr_find`).

Trains a model for a short while at exponentially growing learning rates and
records the loss. The rate where the loss falls fastest, or fastai's
"valley", is a good starting rate. The model comes back exactly as it was.
"""

import dataclasses
import math
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from kft.errors import KftError

_MIN_POINTS = 5


@dataclasses.dataclass
class LRFinderResult:
    """The outcome of `find_lr`.

    Attributes:
        lrs: the learning rate of each recorded step.
        losses: the smoothed loss after each step (debiased exponential
            moving average, as fastai).
        raw_losses: the loss of each step's batch.
        suggestion: the rate where the smoothed loss falls fastest against
            log(rate) (fastai's "steep").
        valley: fastai's "valley": a rate in the middle of the longest stretch
            of falling loss; often the safer pick.
        diverged: whether the sweep stopped early because the loss diverged.
    """

    lrs: np.ndarray
    losses: np.ndarray
    raw_losses: np.ndarray
    suggestion: float
    valley: float
    diverged: bool

    @classmethod
    def from_losses(cls, lrs, raw_losses, smoothing=0.98, diverged=False):
        """Smooths a sweep's losses and picks the suggested rates.

        Args:
            lrs: increasing learning rates, one per step.
            raw_losses: the loss of each step.
            smoothing: weight of the past in the moving average (0 for none).
            diverged: whether the sweep stopped because the loss diverged.

        Returns:
            An `LRFinderResult`.
        """
        lrs = np.asarray(lrs, dtype="float64")
        raw_losses = np.asarray(raw_losses, dtype="float64")
        if len(lrs) != len(raw_losses):
            raise KftError(f"{len(lrs)} learning rates but {len(raw_losses)} losses.")
        if len(lrs) < _MIN_POINTS:
            raise KftError(
                f"The learning-rate sweep has only {len(lrs)} steps before the loss "
                f"diverged; at least {_MIN_POINTS} are needed. Lower start_lr or give "
                "more steps."
            )
        losses = _smooth(raw_losses, smoothing)
        # Like fastai, leave out the noisy start and the diverging end.
        start, end = len(lrs) // 10, len(lrs) - 5
        if end - start < _MIN_POINTS:
            start, end = 0, len(lrs)
        return cls(
            lrs=lrs,
            losses=losses,
            raw_losses=raw_losses,
            suggestion=_steepest(lrs[start:end], losses[start:end]),
            valley=_valley(lrs[start:end], losses[start:end]),
            diverged=bool(diverged),
        )

    def __str__(self):
        return (
            f"suggested learning rate {self.suggestion:.2e} (steepest descent), "
            f"{self.valley:.2e} (valley); swept {self.lrs[0]:.1e} .. {self.lrs[-1]:.1e} "
            f"in {len(self.lrs)} steps{', stopped at divergence' if self.diverged else ''}"
        )

    def plot(self, path):
        """Writes a PNG of the smoothed loss against the learning rate.

        Args:
            path: the PNG file to write (written to a temporary name first,
                then renamed into place).

        Returns:
            `path`.
        """
        # The object-oriented API with the Agg canvas leaves pyplot's global
        # backend alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        end = len(self.lrs) - 5 if len(self.lrs) - 5 >= _MIN_POINTS else len(self.lrs)
        figure = Figure(figsize=(6, 4), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.plot(self.lrs[:end], self.losses[:end], color="tab:blue")
        for rate, label, color in (
            (self.suggestion, "steepest", "tab:red"),
            (self.valley, "valley", "tab:green"),
        ):
            loss = float(np.interp(np.log(rate), np.log(self.lrs), self.losses))
            axes.plot([rate], [loss], "o", color=color, label=f"{label}: {rate:.1e}")
        axes.set_xscale("log")
        axes.set_xlabel("learning rate")
        axes.set_ylabel("loss (smoothed)")
        axes.legend()
        figure.tight_layout()
        path = os.fspath(path)
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(suffix=".png", dir=directory)
        os.close(handle)
        try:
            figure.savefig(temporary, format="png")
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
        return path


def find_lr(
    model,
    dataset,
    start_lr=1e-7,
    end_lr=10.0,
    num_steps=100,
    diverge=4.0,
    smoothing=0.98,
):
    """Sweeps the learning rate exponentially and records the loss.

    The model must be compiled: the sweep trains with its loss and a fresh
    copy of its optimizer (same type and settings, per-layer rates included;
    the learning rate is the sweep's). It stops early when the smoothed loss
    exceeds `diverge` times the best so far. Afterwards every model variable
    (weights, BatchNorm statistics, random seeds) and metric is restored bit
    for bit; the model's own optimizer and train function are never used.

    Args:
        model: a compiled Keras model.
        dataset: a `tf.data.Dataset` of training batches, `(x, y)` or
            `(x, y, sample_weight)`; repeated if shorter than `num_steps`.
        start_lr: the first rate.
        end_lr: the last rate.
        num_steps: number of steps (rates) of the sweep.
        diverge: stop when the smoothed loss exceeds this many times its best.
        smoothing: weight of the past in the loss's moving average.

    Returns:
        An `LRFinderResult`.

    Example:
    ```python
    result = kft.find_lr(model, train_ds)
    print(result)  # suggested learning rate 3.02e-04 (steepest descent), ...
    result.plot("lr_find.png")
    ```
    """
    _check_arguments(start_lr, end_lr, num_steps, diverge, smoothing)
    if getattr(model, "optimizer", None) is None or not getattr(model, "compiled", False):
        raise KftError(
            "find_lr needs a compiled model: it trains with the model's loss and a copy of "
            "its optimizer. Call model.compile(optimizer=..., loss=...) first."
        )
    if not model.trainable_variables:
        raise KftError("find_lr: the model has no trainable variables; unfreeze some layers.")
    if not isinstance(dataset, tf.data.Dataset):
        raise KftError(
            f"find_lr takes a tf.data.Dataset of (x, y) batches, got {type(dataset).__name__}."
        )

    rates = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    strategy = model.distribute_strategy
    state = _Snapshot(model)
    try:
        with strategy.scope():
            optimizer = keras.optimizers.deserialize(keras.optimizers.serialize(model.optimizer))
            optimizer.learning_rate = _ExponentialSweep(start_lr, end_lr, num_steps)
            # Variables created inside the traced step fail under tf.distribute.
            optimizer.build(model.trainable_variables)
        step = _train_step(model, optimizer, strategy)
        batches = iter(strategy.experimental_distribute_dataset(dataset.repeat()))
        raw_losses, diverged = [], False
        average, best = 0.0, math.inf
        for i in range(num_steps):
            try:
                batch = next(batches)
            except StopIteration:
                raise KftError("find_lr: the dataset is empty.") from None
            loss = float(step(batch))
            if not math.isfinite(loss):
                diverged = True
                break
            raw_losses.append(loss)
            average = smoothing * average + (1 - smoothing) * loss
            smoothed = average / (1 - smoothing ** (i + 1))
            best = min(best, smoothed)
            if smoothed > diverge * best:
                diverged = True
                break
    finally:
        state.restore()
    return LRFinderResult.from_losses(
        rates[: len(raw_losses)], raw_losses, smoothing=smoothing, diverged=diverged
    )


class _ExponentialSweep(keras.optimizers.schedules.LearningRateSchedule):
    """The sweep's rates as a schedule of the (fresh) optimizer's step.

    Only lives inside `find_lr`; never saved.
    """

    def __init__(self, start_lr, end_lr, num_steps):
        self.start_lr = start_lr
        self.end_lr = end_lr
        self.num_steps = num_steps

    def __call__(self, step):
        fraction = keras.ops.cast(step, "float32") / (self.num_steps - 1)
        return self.start_lr * keras.ops.power(self.end_lr / self.start_lr, fraction)

    def get_config(self):
        return {"start_lr": self.start_lr, "end_lr": self.end_lr, "num_steps": self.num_steps}


def _train_step(model, optimizer, strategy):
    # Mirrors Keras' TensorFlow train_step without touching model.optimizer,
    # model.train_function or the compiled metrics.
    def replica_step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
            scaled = optimizer.scale_loss(loss)
        variables = model.trainable_variables
        optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss

    @tf.function
    def step(data):
        # compute_loss divides by the number of replicas; their sum is the mean.
        losses = strategy.run(replica_step, args=(data,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return step


class _Snapshot:
    """Every variable of a model and its metrics, to put back bit for bit."""

    def __init__(self, model):
        self.model = model
        self.variables = list(model.variables) + list(model.metrics_variables)
        self.values = [variable.numpy() for variable in self.variables]

    def restore(self):
        for metric in self.model.metrics:
            # Metrics first built during the sweep hold its values.
            metric.reset_state()
        for variable, value in zip(self.variables, self.values):
            variable.assign(value)


def _smooth(losses, smoothing):
    smoothed, average = np.empty_like(losses), 0.0
    for i, loss in enumerate(losses):
        average = smoothing * average + (1 - smoothing) * loss
        smoothed[i] = average / (1 - smoothing ** (i + 1))
    return smoothed


def _steepest(lrs, losses):
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(slopes))])


def _valley(lrs, losses):
    # fastai's valley: the longest decreasing subsequence of the losses, then
    # a point a half of its length in (fastai's `sections + sections / 2`
    # with sections a third of it).
    count = len(losses)
    lengths = [1] * count
    start, end = 0, 0
    for i in range(1, count):
        for j in range(i):
            if losses[i] < losses[j] and lengths[i] < lengths[j] + 1:
                lengths[i] = lengths[j] + 1
            if lengths[end] < lengths[i]:
                end = i
                start = end - lengths[end]
    sections = (end - start) / 3
    index = start + int(sections) + int(sections / 2)
    return float(lrs[min(max(index, 0), count - 1)])


def _check_arguments(start_lr, end_lr, num_steps, diverge, smoothing):
    if not (0 < start_lr < end_lr and math.isfinite(end_lr)):
        raise KftError(
            f"find_lr needs 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}."
        )
    if int(num_steps) != num_steps or num_steps < _MIN_POINTS:
        raise KftError(
            f"find_lr: num_steps must be a whole number of {_MIN_POINTS} or more, got {num_steps}."
        )
    if not diverge > 1:
        raise KftError(f"find_lr: diverge must be above 1 (e.g. 4), got {diverge}.")
    if not 0 <= smoothing < 1:
        raise KftError(f"find_lr: smoothing must be in [0, 1), got {smoothing}.")
