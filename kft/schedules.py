"""Learning-rate schedules for fine-tuning, driven by the optimizer's step.

All are `keras.optimizers.schedules.LearningRateSchedule`s: pass one as an
optimizer's `learning_rate`. Each is registered for `.keras` saving. A
schedule's end is its `total_steps`: the value there is the final one and
stays so afterwards (the last update, step `total_steps - 1`, is one step
before it).
"""

import math
import re

import keras
from keras import ops

from kft.errors import KftError
from kft.internal.checks import is_number

DECAYS = ("constant", "linear", "cosine", "polynomial")
NAMES = DECAYS + ("slanted_triangular", "one_cycle", "cyclical")


@keras.saving.register_keras_serializable(package="kft")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak_lr`, then a decay to `final_lr` at `total_steps`.

    The usual schedule for fine-tuning transformers (BERT used linear decay,
    most later work cosine).

    Args:
        peak_lr: the rate at the end of warmup.
        total_steps: optimizer steps of the whole run; the decay reaches
            `final_lr` there.
        warmup: warmup length: an int number of steps (a value of 1 or more),
            or a fraction of `total_steps` (a float below 1). 0 for none.
        decay: `"constant"` (stay at `peak_lr`), `"linear"`, `"cosine"` or
            `"polynomial"`.
        final_lr: the rate at `total_steps` and after.
        power: exponent of the `"polynomial"` decay.
        initial_lr: the rate at step 0, where warmup starts.
        name: optional name.

    Example:
    >>> schedule = WarmupDecay(1e-3, total_steps=100, warmup=0.1, decay="linear")
    >>> [round(float(schedule(s)), 6) for s in (0, 5, 10, 55, 100)]
    [0.0, 0.0005, 0.001, 0.0005, 0.0]
    """

    def __init__(
        self,
        peak_lr,
        total_steps,
        warmup=0,
        decay="cosine",
        final_lr=0.0,
        power=1.0,
        initial_lr=0.0,
        name=None,
    ):
        _check_positive("peak_lr", peak_lr)
        _check_steps("total_steps", total_steps)
        if decay not in DECAYS:
            raise KftError(f"WarmupDecay: unknown decay {decay!r}; use one of {', '.join(DECAYS)}.")
        _check_non_negative("final_lr", final_lr)
        _check_non_negative("initial_lr", initial_lr)
        _check_positive("power", power)
        self.peak_lr = float(peak_lr)
        self.total_steps = int(total_steps)
        self.warmup = warmup
        self.warmup_steps = warmup_steps(warmup, self.total_steps)
        self.decay = decay
        self.final_lr = float(final_lr)
        self.power = float(power)
        self.initial_lr = float(initial_lr)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak, final = self.peak_lr, self.final_lr
        warmup = self.warmup_steps
        decay_steps = max(self.total_steps - warmup, 1)
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        if self.decay == "constant":
            decayed = ops.full_like(step, peak)
        elif self.decay == "linear":
            decayed = peak + (final - peak) * progress
        elif self.decay == "cosine":
            decayed = final + (peak - final) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        else:
            decayed = final + (peak - final) * ops.power(1.0 - progress, self.power)
        if warmup == 0:
            return decayed
        warming = self.initial_lr + (peak - self.initial_lr) * step / warmup
        return ops.where(step < warmup, warming, decayed)

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "total_steps": self.total_steps,
            "warmup": self.warmup,
            "decay": self.decay,
            "final_lr": self.final_lr,
            "power": self.power,
            "initial_lr": self.initial_lr,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="kft")
class SlantedTriangular(keras.optimizers.schedules.LearningRateSchedule):
    """ULMFiT's slanted triangular rate: a short linear rise, a long linear fall.

    From Howard & Ruder (2018): the rate rises from `max_lr / ratio` to
    `max_lr` over the first `cut_frac` of the steps, then falls back to
    `max_lr / ratio` at `total_steps`.

    Args:
        max_lr: the highest rate, reached at step `floor(cut_frac * total_steps)`.
        total_steps: optimizer steps of the whole run.
        cut_frac: fraction of the steps spent rising.
        ratio: how much smaller the lowest rate is than `max_lr`.
        name: optional name.

    Example:
    >>> schedule = SlantedTriangular(0.01, total_steps=100)
    >>> [round(float(schedule(s)), 6) for s in (0, 10, 100)]
    [0.000312, 0.01, 0.000312]
    """

    def __init__(self, max_lr, total_steps, cut_frac=0.1, ratio=32.0, name=None):
        _check_positive("max_lr", max_lr)
        _check_steps("total_steps", total_steps)
        if not 0.0 < cut_frac < 1.0:
            raise KftError(f"SlantedTriangular: cut_frac must be between 0 and 1, got {cut_frac}.")
        if ratio < 1.0:
            raise KftError(f"SlantedTriangular: ratio must be 1 or more, got {ratio}.")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.cut_frac = float(cut_frac)
        self.ratio = float(ratio)
        self.name = name

    @property
    def cut(self):
        """The step where the rate peaks."""
        return max(math.floor(self.total_steps * self.cut_frac), 1)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cut = self.cut
        # ULMFiT divides by cut * (1 / cut_frac - 1); total - cut is the same
        # when cut_frac * total is whole, and ends the fall at total_steps
        # when it is not.
        falling = max(self.total_steps - cut, 1)
        fraction = ops.where(step < cut, step / cut, 1.0 - (step - cut) / falling)
        fraction = ops.clip(fraction, 0.0, 1.0)
        return self.max_lr * (1.0 + fraction * (self.ratio - 1.0)) / self.ratio

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "cut_frac": self.cut_frac,
            "ratio": self.ratio,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="kft")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """The 1cycle policy (Smith 2018, as in fastai's `fit_one_cycle`).

    The rate rises from `max_lr / div` to `max_lr` over the first `pct_start`
    of the steps, then anneals to `max_lr / div_final` at `total_steps`. The
    momentum moves the other way: from `moms[0]` down to `moms[1]` while the
    rate rises, back up to `moms[2]` while it falls.

    The schedule only gives the momentum values (`momentum(step)`); the
    optimizer's `beta_1` (Adam, AdamW, Lion, ...) or `momentum` (SGD) follows
    them when the optimizer is wrapped in `kft.optimizers.LayerwiseLR`.

    Args:
        max_lr: the highest rate.
        total_steps: optimizer steps of the whole run.
        pct_start: fraction of the steps spent rising.
        div: `max_lr / div` is the starting rate.
        div_final: `max_lr / div_final` is the final rate.
        moms: `(start, middle, end)` momentum, or `None` to leave the
            optimizer's momentum alone.
        anneal: `"cosine"` (fastai) or `"linear"` interpolation in each phase.
        name: optional name.

    Example:
    >>> schedule = OneCycle(0.01, total_steps=100)
    >>> [round(float(schedule(s)), 6) for s in (0, 25, 100)]
    [0.0004, 0.01, 0.0]
    >>> [round(float(schedule.momentum(s)), 6) for s in (0, 25, 100)]
    [0.95, 0.85, 0.95]
    """

    def __init__(
        self,
        max_lr,
        total_steps,
        pct_start=0.25,
        div=25.0,
        div_final=1e5,
        moms=(0.95, 0.85, 0.95),
        anneal="cosine",
        name=None,
    ):
        _check_positive("max_lr", max_lr)
        _check_steps("total_steps", total_steps)
        if not 0.0 < pct_start < 1.0:
            raise KftError(f"OneCycle: pct_start must be between 0 and 1, got {pct_start}.")
        _check_positive("div", div)
        _check_positive("div_final", div_final)
        if moms is not None:
            moms = tuple(float(m) for m in moms)
            if len(moms) != 3 or not all(0.0 < m < 1.0 for m in moms):
                raise KftError(
                    f"OneCycle: moms must be three momentum values between 0 and 1 "
                    f"(start, middle, end), got {moms}; or None for no momentum cycle."
                )
        if anneal not in ("cosine", "linear"):
            raise KftError(f"OneCycle: anneal must be 'cosine' or 'linear', got {anneal!r}.")
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.pct_start = float(pct_start)
        self.div = float(div)
        self.div_final = float(div_final)
        self.moms = moms
        self.anneal = anneal
        self.name = name

    @property
    def cycles_momentum(self):
        """Whether this schedule also drives the optimizer's momentum."""
        return self.moms is not None

    def __call__(self, step):
        return self._two_phases(
            step, self.max_lr / self.div, self.max_lr, self.max_lr / self.div_final
        )

    def momentum(self, step):
        """The momentum (`beta_1` for Adam-like optimizers) at `step`.

        Args:
            step: the optimizer step.

        Returns:
            A float32 scalar tensor.
        """
        if self.moms is None:
            raise KftError("OneCycle: this schedule has no momentum cycle (moms=None).")
        return self._two_phases(step, *self.moms)

    def _two_phases(self, step, start, middle, end):
        step = ops.cast(step, "float32")
        rising = self.pct_start * self.total_steps
        falling = self.total_steps - rising
        first = self._interpolate(start, middle, ops.clip(step / rising, 0.0, 1.0))
        second = self._interpolate(middle, end, ops.clip((step - rising) / falling, 0.0, 1.0))
        return ops.where(step < rising, first, second)

    def _interpolate(self, start, end, fraction):
        if self.anneal == "linear":
            return start + (end - start) * fraction
        return end + (start - end) * 0.5 * (1.0 + ops.cos(math.pi * fraction))

    def get_config(self):
        return {
            "max_lr": self.max_lr,
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "div": self.div,
            "div_final": self.div_final,
            "moms": None if self.moms is None else list(self.moms),
            "anneal": self.anneal,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="kft")
class CyclicalTriangular(keras.optimizers.schedules.LearningRateSchedule):
    """Cyclical learning rates (Smith 2017): triangles between two rates.

    Args:
        base_lr: the lowest rate, at the start and end of each cycle.
        max_lr: the highest rate, in the middle of each cycle.
        step_size: steps of half a cycle.
        mode: `"triangular"` (constant amplitude), `"triangular2"` (amplitude
            halves each cycle) or `"exp_range"` (amplitude times
            `gamma ** step`).
        gamma: decay base for `"exp_range"`.
        name: optional name.

    Example:
    >>> schedule = CyclicalTriangular(0.001, 0.006, step_size=10)
    >>> [round(float(schedule(s)), 6) for s in (0, 5, 10, 20)]
    [0.001, 0.0035, 0.006, 0.001]
    """

    MODES = ("triangular", "triangular2", "exp_range")

    def __init__(self, base_lr, max_lr, step_size, mode="triangular", gamma=1.0, name=None):
        _check_non_negative("base_lr", base_lr)
        _check_positive("max_lr", max_lr)
        if max_lr < base_lr:
            raise KftError(f"CyclicalTriangular: max_lr ({max_lr}) is below base_lr ({base_lr}).")
        _check_steps("step_size", step_size)
        if mode not in self.MODES:
            raise KftError(
                f"CyclicalTriangular: unknown mode {mode!r}; use one of {', '.join(self.MODES)}."
            )
        if not 0.0 < gamma <= 1.0:
            raise KftError(f"CyclicalTriangular: gamma must be in (0, 1], got {gamma}.")
        self.base_lr = float(base_lr)
        self.max_lr = float(max_lr)
        self.step_size = int(step_size)
        self.mode = mode
        self.gamma = float(gamma)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cycle = ops.floor(1.0 + step / (2.0 * self.step_size))
        position = ops.abs(step / self.step_size - 2.0 * cycle + 1.0)
        height = (self.max_lr - self.base_lr) * ops.maximum(0.0, 1.0 - position)
        if self.mode == "triangular2":
            height = height / ops.power(2.0, cycle - 1.0)
        elif self.mode == "exp_range":
            height = height * ops.power(self.gamma, step)
        return self.base_lr + height

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "max_lr": self.max_lr,
            "step_size": self.step_size,
            "mode": self.mode,
            "gamma": self.gamma,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="kft")
class PerUpdateSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule over optimizer updates, for an optimizer that accumulates.

    Keras calls an accumulating optimizer's schedule with its batch count;
    this passes on the update count (`batch // steps`), so warmup and decay
    lengths given in updates mean updates. A `kft.schedules.OneCycle`'s
    momentum cycle follows the same count.

    Args:
        schedule: a `LearningRateSchedule` sized in updates.
        steps: batches per update.
    """

    def __init__(self, schedule, steps):
        self.schedule = schedule
        _check_steps("steps", steps)
        self.steps = int(steps)

    def __call__(self, step):
        return self.schedule(step // self.steps)

    @property
    def cycles_momentum(self):
        return getattr(self.schedule, "cycles_momentum", False)

    def momentum(self, step):
        return self.schedule.momentum(step // self.steps)

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule),
                "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)


def warmup_steps(warmup, total_steps, steps_per_epoch=None):
    """Converts a warmup length into a number of steps.

    Args:
        warmup: an int number of steps (a value of 1 or more), a fraction of
            `total_steps` (a float below 1), or a string `"N epochs"` (`N` may
            be fractional; needs `steps_per_epoch`), which makes warmup
            proportional to the dataset's size.
        total_steps: steps of the whole run.
        steps_per_epoch: batches per epoch, for warmup given in epochs.

    Returns:
        The warmup length in steps, at most `total_steps`.

    Example:
    >>> warmup_steps(0.06, 1000), warmup_steps(50, 1000), warmup_steps("0.5 epochs", 1000, 300)
    (60, 50, 150)
    """
    if isinstance(warmup, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*epochs?\s*", warmup)
        if match:
            if not steps_per_epoch:
                raise KftError(
                    f"warmup={warmup!r} is given in epochs, but the steps per epoch are "
                    "unknown; give warmup in steps or as a fraction of the run."
                )
            steps = round(float(match.group(1)) * steps_per_epoch)
        else:
            try:
                warmup = float(warmup)
            except ValueError:
                raise KftError(
                    f"warmup={warmup!r} is not a number of steps, a fraction of the run "
                    "or 'N epochs'."
                ) from None
            return warmup_steps(warmup, total_steps)
    elif not is_number(warmup) or warmup < 0:
        raise KftError(
            f"warmup must be a number of steps or a fraction of 0 or more, got {warmup!r}."
        )
    elif warmup < 1:
        steps = round(warmup * total_steps)
    elif warmup != int(warmup):
        raise KftError(
            f"warmup={warmup} is neither a whole number of steps nor a fraction below 1."
        )
    else:
        steps = int(warmup)
    if steps > total_steps:
        raise KftError(
            f"warmup of {steps} steps is longer than the run ({total_steps} steps); "
            "shorten it or give it as a fraction below 1."
        )
    return steps


def total_steps(steps_per_epoch, epochs):
    """Steps of a run: `steps_per_epoch * epochs`, checked.

    Args:
        steps_per_epoch: batches per epoch (`len(dataset)` or a tf.data
            cardinality; unknown or infinite cardinalities are refused).
        epochs: number of epochs.

    Returns:
        The number of optimizer steps.
    """
    steps_per_epoch = int(steps_per_epoch)
    if steps_per_epoch <= 0:
        raise KftError(
            f"Cannot size the schedule: the dataset's steps per epoch are unknown "
            f"({steps_per_epoch}); give total_steps, or a dataset with a known length "
            "(for tf.data, `dataset.apply(tf.data.experimental.assert_cardinality(n))`)."
        )
    if int(epochs) <= 0:
        raise KftError(f"epochs must be positive to size a schedule, got {epochs}.")
    return steps_per_epoch * int(epochs)


def from_name(name, peak_lr, total_steps, warmup=0, steps_per_epoch=None, **options):
    """Builds a schedule from a recipe's plain parameters.

    Args:
        name: `"constant"`, `"linear"`, `"cosine"`, `"polynomial"` (a
            `WarmupDecay` with that decay), `"slanted_triangular"`,
            `"one_cycle"` or `"cyclical"`.
        peak_lr: the highest rate of the schedule.
        total_steps: optimizer steps of the whole run (see `total_steps`).
        warmup: warmup length, see `warmup_steps`. For `"slanted_triangular"`
            it sets `cut_frac`, for `"one_cycle"` `pct_start`; `"cyclical"`
            has none.
        steps_per_epoch: batches per epoch, for warmup in epochs.
        **options: further constructor arguments of the schedule
            (`final_lr`, `power`, `ratio`, `div`, `moms`, `step_size`, ...).

    Returns:
        A `LearningRateSchedule`.

    Example:
    >>> schedule = from_name("cosine", 3e-5, total_steps=1000, warmup=0.06)
    >>> schedule.warmup_steps
    60
    """
    name = str(name).lower().replace("-", "_")
    warm = warmup_steps(warmup, total_steps, steps_per_epoch)
    try:
        if name in DECAYS:
            return WarmupDecay(peak_lr, total_steps, warmup=warm, decay=name, **options)
        if name == "slanted_triangular":
            if warm:
                options.setdefault("cut_frac", warm / total_steps)
            return SlantedTriangular(peak_lr, total_steps, **options)
        if name == "one_cycle":
            if warm:
                options.setdefault("pct_start", warm / total_steps)
            return OneCycle(peak_lr, total_steps, **options)
        if name == "cyclical":
            if warm:
                raise KftError(
                    "The 'cyclical' schedule has no warmup; drop warmup or pick another schedule."
                )
            options.setdefault("base_lr", peak_lr / 4.0)
            # Two full cycles over the run unless told otherwise.
            options.setdefault("step_size", max(total_steps // 4, 1))
            return CyclicalTriangular(max_lr=peak_lr, **options)
    except TypeError as error:
        raise KftError(f"Schedule {name!r}: {error}.") from None
    raise KftError(f"Unknown schedule {name!r}; use one of {', '.join(NAMES)}.")


def _check_positive(name, value):
    if not (is_number(value) and value > 0):
        raise KftError(f"{name} must be a positive number, got {value!r}.")


def _check_non_negative(name, value):
    if not (is_number(value) and value >= 0):
        raise KftError(f"{name} must be a number of 0 or more, got {value!r}.")


def _check_steps(name, value):
    if not (is_number(value) and float(value).is_integer() and value >= 1):
        raise KftError(f"{name} must be a whole number of steps of 1 or more, got {value!r}.")
