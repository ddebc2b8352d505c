import keras
import pytest

from kft import schedules
from kft.runs.compiling import stage_learning_rate, stage_optimizer
from kft.errors import KftError
from kft.optimizers import LayerwiseLR
from kft.runs.recipe import Stage
from tests.helpers.tiny_models import tiny_image_model


def test_plain_stage_gets_the_named_optimizer_at_a_constant_rate():
    optimizer = stage_optimizer(tiny_image_model(), Stage("s", 1, lr=0.01, optimizer="sgd"), 10)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    assert float(optimizer.learning_rate) == pytest.approx(0.01)


@pytest.mark.parametrize("schedule", [None, "none", ""])
def test_no_schedule_means_a_constant_rate(schedule):
    assert stage_learning_rate(Stage("s", 3, lr=1e-3, schedule=schedule), 20) == 1e-3


def test_schedule_spans_the_stage_steps_with_warmup():
    schedule = stage_learning_rate(Stage("s", 3, lr=1e-3, schedule="cosine", warmup=0.1), 20)
    assert isinstance(schedule, schedules.WarmupDecay)
    assert schedule.total_steps == 60 and schedule.warmup_steps == 6
    assert float(schedule(6)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize(
    "stage",
    [
        Stage("s", 1, layer_decay=0.8),
        Stage("s", 1, weight_decay=0.01, optimizer="adamw"),
        Stage("s", 1, schedule="one_cycle"),
    ],
)
def test_per_layer_rates_decay_and_one_cycle_use_layerwise_lr(stage):
    assert isinstance(stage_optimizer(tiny_image_model(), stage, 10), LayerwiseLR)


def test_layer_decay_gives_lower_groups_lower_rates():
    model = tiny_image_model()
    optimizer = stage_optimizer(model, Stage("s", 1, lr=1.0, layer_decay=0.5), 10)
    optimizer.build(model.trainable_variables)
    rates = {v.path: optimizer.multiplier(v) for v in model.trainable_variables}
    assert rates["head_dense/kernel"] == 1.0
    assert rates["block1_conv/kernel"] < rates["block2_conv/kernel"] < 1.0


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(KftError, match="unknown optimizer 'adamax'"):
        stage_optimizer(tiny_image_model(), Stage("s", 1, optimizer="adamax"), 10)
