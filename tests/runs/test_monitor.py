"""kft.runs.monitor: which way a monitored metric improves, by Keras' rule."""

import keras
import pytest

from kft.errors import KftError
from kft.evaluation.entities import EntityF1
from kft.runs.monitor import monitor_mode


@pytest.mark.parametrize(
    "monitor, metrics, expected",
    [
        ("val_loss", (), "min"),
        ("loss", ["accuracy"], "min"),
        ("val_accuracy", ["accuracy"], "max"),
        ("val_acc", ["acc"], "max"),
        ("val_mae", ["mae"], "min"),
        ("val_mean_squared_error", ["mean_squared_error"], "min"),
        ("val_auc", [keras.metrics.AUC()], "max"),
        ("val_auc", ["auc"], "max"),
        ("val_entity_f1", [EntityF1()], "max"),
        ("val_rmse", [keras.metrics.RootMeanSquaredError(name="rmse")], "min"),
        ("test_accuracy", ["accuracy"], "max"),
    ],
)
def test_direction_follows_the_metric(monitor, metrics, expected):
    assert monitor_mode(monitor, metrics) == expected


def test_an_explicit_mode_wins_and_unknown_metrics_are_an_error():
    assert monitor_mode("val_custom", [], mode="max") == "max"
    with pytest.raises(KftError, match="monitor_mode='max' or 'min'"):
        monitor_mode("val_custom", ["accuracy"])
    with pytest.raises(KftError, match="one of auto, min, max"):
        monitor_mode("val_loss", [], mode="up")
