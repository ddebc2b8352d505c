"""Tests of kft.schedules: values at known steps, names, saving."""

import math

import keras
import numpy as np
import pytest

from kft import schedules
from kft.errors import KftError
from kft.schedules import CyclicalTriangular
from kft.schedules import OneCycle
from kft.schedules import SlantedTriangular
from kft.schedules import WarmupDecay


def assert_values(schedule, expected):
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-6, abs=1e-12), step


def test_warmup_then_linear_decay():
    schedule = WarmupDecay(1e-3, total_steps=100, warmup=10, decay="linear")
    assert_values(schedule, {0: 0.0, 5: 5e-4, 10: 1e-3, 55: 5e-4, 100: 0.0, 150: 0.0})


def test_warmup_then_cosine_decay_to_final_lr():
    schedule = WarmupDecay(1.0, total_steps=110, warmup=10, decay="cosine", final_lr=0.1)
    assert_values(
        schedule,
        {
            10: 1.0,
            35: 0.1 + 0.45 * (1 + math.cos(math.pi / 4)),
            60: 0.55,
            110: 0.1,
            500: 0.1,
        },
    )


def test_polynomial_and_constant_decays():
    polynomial = WarmupDecay(1.0, total_steps=100, decay="polynomial", power=2.0)
    assert_values(polynomial, {0: 1.0, 50: 0.25, 75: 0.0625, 100: 0.0})
    constant = WarmupDecay(2.0, total_steps=100, warmup=4, decay="constant", initial_lr=0.4)
    assert_values(constant, {0: 0.4, 2: 1.2, 4: 2.0, 99: 2.0, 1000: 2.0})


def test_warmup_as_a_fraction_of_the_run():
    schedule = WarmupDecay(1.0, total_steps=200, warmup=0.1, decay="linear")
    assert schedule.warmup_steps == 20
    assert_values(schedule, {10: 0.5, 20: 1.0, 110: 0.5})


def test_slanted_triangular_follows_ulmfit():
    schedule = SlantedTriangular(0.01, total_steps=100)
    assert schedule.cut == 10
    assert_values(
        schedule,
        {
            0: 0.01 / 32,
            5: 0.01 * 16.5 / 32,
            10: 0.01,
            55: 0.01 * 16.5 / 32,
            100: 0.01 / 32,
            200: 0.01 / 32,
        },
    )


def test_one_cycle_rate_and_momentum():
    schedule = OneCycle(1.0, total_steps=200)
    assert_values(schedule, {0: 0.04, 25: 0.52, 50: 1.0, 125: 0.500005, 200: 1e-5})
    for step, value in {0: 0.95, 25: 0.9, 50: 0.85, 125: 0.9, 200: 0.95}.items():
        assert float(schedule.momentum(step)) == pytest.approx(value, rel=1e-6), step
    cosine_at_10 = 1.0 - 0.48 * (1 + math.cos(0.2 * math.pi))
    assert_values(schedule, {10: cosine_at_10})
    assert_values(OneCycle(1.0, total_steps=200, anneal="linear"), {10: 0.04 + 0.96 * 0.2})
    assert schedule.cycles_momentum
    assert not OneCycle(1.0, 200, moms=None).cycles_momentum
    with pytest.raises(KftError, match="no momentum cycle"):
        OneCycle(1.0, 200, moms=None).momentum(0)


def test_cyclical_triangular_modes():
    triangular = CyclicalTriangular(0.001, 0.006, step_size=10)
    assert_values(triangular, {0: 0.001, 5: 0.0035, 10: 0.006, 15: 0.0035, 20: 0.001, 30: 0.006})
    halving = CyclicalTriangular(0.001, 0.006, step_size=10, mode="triangular2")
    assert_values(halving, {10: 0.006, 30: 0.0035, 50: 0.00225})
    exponential = CyclicalTriangular(0.001, 0.006, step_size=10, mode="exp_range", gamma=0.99)
    assert_values(exponential, {10: 0.001 + 0.005 * 0.99**10, 20: 0.001})


@pytest.mark.parametrize(
    "schedule",
    [
        WarmupDecay(3e-4, total_steps=50, warmup=0.1, decay="polynomial", power=2.0),
        SlantedTriangular(1e-3, total_steps=50, cut_frac=0.2, ratio=10),
        OneCycle(1e-3, total_steps=50, moms=(0.9, 0.8, 0.85), anneal="linear"),
        CyclicalTriangular(1e-4, 1e-3, step_size=5, mode="triangular2"),
    ],
    ids=lambda s: type(s).__name__,
)
def test_schedules_survive_a_keras_save_and_load(schedule, tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    model.fit(np.ones((8, 2)), np.ones((8, 1)), batch_size=4, verbose=0)
    model.save(tmp_path / "model.keras")

    loaded = keras.models.load_model(tmp_path / "model.keras")
    restored = loaded.optimizer._learning_rate
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for step in (0, 3, 7, 25, 50):
        assert float(restored(step)) == float(schedule(step))
    assert int(loaded.optimizer.iterations) == 2


def test_from_name_builds_each_schedule():
    cosine = schedules.from_name("cosine", 3e-5, total_steps=1000, warmup=0.06)
    assert isinstance(cosine, WarmupDecay)
    assert (cosine.decay, cosine.warmup_steps) == ("cosine", 60)
    linear = schedules.from_name("linear", 1e-3, total_steps=100, warmup=5, final_lr=1e-5)
    assert linear.warmup_steps == 5 and linear.final_lr == 1e-5
    slanted = schedules.from_name("slanted-triangular", 1e-3, total_steps=100, warmup=0.2)
    assert isinstance(slanted, SlantedTriangular) and slanted.cut_frac == 0.2
    cycle = schedules.from_name("one_cycle", 1e-3, total_steps=100, warmup=30)
    assert isinstance(cycle, OneCycle) and cycle.pct_start == 0.3
    cyclical = schedules.from_name("cyclical", 1e-3, total_steps=100)
    assert isinstance(cyclical, CyclicalTriangular)
    assert (cyclical.base_lr, cyclical.step_size) == (2.5e-4, 25)
    epochs = schedules.from_name(
        "constant", 1e-3, total_steps=100, warmup="1.5 epochs", steps_per_epoch=10
    )
    assert epochs.warmup_steps == 15


def test_warmup_and_total_steps_conversions():
    assert schedules.warmup_steps(0.06, 1000) == 60
    assert schedules.warmup_steps(50, 1000) == 50
    assert schedules.warmup_steps(50.0, 1000) == 50
    assert schedules.warmup_steps("0.1", 1000) == 100
    assert schedules.warmup_steps("2 epochs", 1000, steps_per_epoch=30) == 60
    assert schedules.warmup_steps(np.int64(7), 10) == 7
    assert schedules.total_steps(30, 4) == 120


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: schedules.from_name("exponential", 1e-3, 100),
            "Unknown schedule 'exponential'; use one of constant, linear",
        ),
        (lambda: schedules.from_name("cyclical", 1e-3, 100, warmup=0.1), "has no warmup"),
        (
            lambda: schedules.from_name("cosine", 1e-3, 100, ratio=3),
            "unexpected keyword argument 'ratio'",
        ),
        (lambda: schedules.warmup_steps(200, 100), "longer than the run"),
        (lambda: schedules.warmup_steps(2.5, 100), "neither a whole number of steps nor"),
        (lambda: schedules.warmup_steps("1 epoch", 100), "steps per epoch are unknown"),
        (lambda: schedules.warmup_steps("soon", 100), "not a number of steps, a fraction"),
        (lambda: schedules.warmup_steps(-0.1, 100), "fraction of 0 or more"),
        (lambda: schedules.total_steps(-2, 3), "steps per epoch are unknown"),
        (lambda: WarmupDecay(1e-3, 100, decay="step"), "unknown decay 'step'"),
        (lambda: WarmupDecay(0.0, 100), "peak_lr must be a positive number"),
        (lambda: WarmupDecay(1e-3, 0), "total_steps must be a whole number of steps of 1 or more"),
        (lambda: SlantedTriangular(1e-3, 100, cut_frac=1.5), "cut_frac must be between 0 and 1"),
        (lambda: OneCycle(1e-3, 100, moms=(0.9, 0.8)), "three momentum values"),
        (lambda: CyclicalTriangular(1e-2, 1e-3, 10), "max_lr .* is below base_lr"),
    ],
)
def test_bad_settings_raise_clear_errors(call, message):
    with pytest.raises(KftError, match=message):
        call()
