"""Whether a monitored metric improves upward or downward: Keras' rule, in one place.

The best checkpoint of a run and the objective of a search both need to
know if `val_mae` should fall and `val_auc` rise. Keras' `MonitorCallback`
decides it from the compiled metric objects' direction (a loss falls); kft
applies the same rule to the recipe's declared metrics, so it is known
before any model is compiled (a search's oracle needs it first).
"""

import keras

from kft.errors import KftError

MODES = ("auto", "min", "max")


def monitor_mode(monitor, metrics=(), mode="auto"):
    """`"min"` or `"max"` for the quantity `monitor`.

    Args:
        monitor: a logged name, e.g. `"val_accuracy"`, `"val_mae"`, `"loss"`.
        metrics: the metrics the model is compiled with (names or
            `keras.metrics.Metric` objects), as in `Recipe.metrics`.
        mode: `"min"` or `"max"` to say it; `"auto"` infers it as Keras'
            `MonitorCallback` does: the loss falls, a metric moves in its
            declared direction.

    Returns:
        `"min"` or `"max"`.

    Raises:
        KftError: `mode` is unknown, or `"auto"` cannot tell.
    """
    if mode not in MODES:
        raise KftError(f"Monitor mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_").removeprefix("test_")
    if name == "loss":
        return "min"
    for metric in metrics or ():
        found = _direction(metric, name)
        if found is not None:
            return "max" if found == "up" else "min"
    raise KftError(
        f"kft cannot tell whether {monitor!r} should be maximised or minimised: it is not "
        "the loss or one of the recipe's metrics with a known direction. Set the recipe's "
        "monitor_mode='max' or 'min' (or kft tune --direction)."
    )


def _direction(metric, name):
    """The direction of `metric` if it is the one logged as `name`, else None."""
    if isinstance(metric, str):
        if metric != name:
            return None
        if metric.lower() in ("accuracy", "acc"):
            return "up"  # Keras picks a binary/categorical accuracy; all rise.
        try:
            metric = keras.metrics.get(metric)
        except ValueError:
            return None
        if isinstance(metric, type):
            metric = metric()
        if not isinstance(metric, keras.metrics.Metric):
            # A metric function, wrapped as Keras' compile wraps it (losses fall).
            from keras.src.metrics.reduction_metrics import MeanMetricWrapper

            metric = MeanMetricWrapper(metric)
        return getattr(metric, "_direction", None)
    if getattr(metric, "name", None) != name:
        return None
    return getattr(metric, "_direction", None)
