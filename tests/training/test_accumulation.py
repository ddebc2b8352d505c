"""Gradient accumulation: N batches of b update like one batch of N*b."""

import keras
import numpy as np
import pytest

import kft
from kft import schedules
from kft.training import accumulation
from kft.runs.compiling import compile_stage, stage_learning_rate
from kft.errors import KftError


def _model():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(5, activation="tanh", name="block1_dense")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(hidden)
    return keras.Model(inputs, outputs)


def _train(accumulate, batch_size, data):
    keras.utils.set_random_seed(0)
    model = _model()
    x, y = data
    recipe = kft.Recipe(name="t", params={}, data=None, model=None, stages=None)
    # SGD with momentum through LayerwiseLR (layer_decay) and a decaying schedule.
    stage = kft.Stage("all", epochs=1, optimizer="sgd", lr=0.5, layer_decay=0.5,
                      schedule="linear")
    compile_stage(model, recipe, stage, steps_per_epoch=len(x) // batch_size,
                  accumulate=accumulate)
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
    return model


def test_accumulated_batches_update_like_one_large_batch():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(16, 4)).astype("float32"), np.arange(16) % 3
    large = _train(1, 8, data)
    accumulated = _train(4, 2, data)
    single_small = _train(1, 2, data)
    for a, b in zip(large.get_weights(), accumulated.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # Two updates in both; eight small unaccumulated steps end elsewhere.
    assert int(accumulated.optimizer.iterations) == int(large.optimizer.iterations) == 2
    assert max(np.max(np.abs(a - b)) for a, b in
               zip(large.get_weights(), single_small.get_weights())) > 1e-3


def test_schedule_counts_updates_and_round_trips():
    stage = kft.Stage("s", epochs=2, lr=1.0, schedule="linear", warmup=2)
    schedule = stage_learning_rate(stage, steps_per_epoch=10, accumulate=4)
    assert isinstance(schedule, schedules.PerUpdateSchedule)
    # 20 batches = 5 updates; warmup 2 updates = 8 batches.
    assert schedule.schedule.total_steps == 5 and schedule.schedule.warmup_steps == 2
    assert float(schedule(3)) == float(schedule.schedule(0))
    assert float(schedule(8)) == pytest.approx(1.0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert [float(restored(step)) for step in range(20)] == [float(schedule(s)) for s in range(20)]


def test_one_cycle_momentum_follows_updates():
    cycle = schedules.OneCycle(1e-2, total_steps=10)
    schedule = schedules.PerUpdateSchedule(cycle, 3)
    assert schedule.cycles_momentum
    assert float(schedule.momentum(7)) == float(cycle.momentum(2))


def test_bad_accumulation_is_a_clear_error():
    with pytest.raises(KftError, match="accumulate must be a whole number"):
        accumulation.check_accumulate(0)
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    with pytest.raises(KftError, match="already accumulates 2"):
        accumulation.accumulate_gradients(optimizer, 4)
    assert accumulation.accumulate_gradients(keras.optimizers.SGD(0.1), 3).gradient_accumulation_steps == 3
