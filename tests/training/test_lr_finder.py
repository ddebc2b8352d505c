"""Tests of kft.training.lr_finder: the sweep, its suggestions, and a model left as it was."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft.errors import KftError
from kft.training.lr_finder import LRFinderResult
from kft.training.lr_finder import find_lr
from kft.optimizers import LayerwiseLR
from kft.schedules import OneCycle
from tests.helpers.tiny_models import random_images
from tests.helpers.tiny_models import tiny_image_model
from tests.helpers.process import run_script


def dataset(count=48, batch_size=8):
    images, labels = random_images(count)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)


def compiled_model(optimizer=None):
    keras.utils.set_random_seed(0)
    model = tiny_image_model()
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def state(model):
    return (
        [v.numpy() for v in model.variables],
        [v.numpy() for v in model.optimizer.variables],
        [v.numpy() for v in model.metrics_variables],
    )


def assert_same_state(before, after):
    for old_group, new_group in zip(before, after):
        assert len(old_group) == len(new_group)
        for old, new in zip(old_group, new_group):
            np.testing.assert_array_equal(old, new)


def test_sweep_leaves_weights_optimizer_and_train_function_as_they_were():
    model = compiled_model()
    model.fit(dataset(), epochs=1, shuffle=False, verbose=0)
    optimizer, train_function = model.optimizer, model.train_function
    before = state(model)

    result = find_lr(model, dataset(), start_lr=1e-5, end_lr=1.0, num_steps=30)

    assert_same_state(before, state(model))
    assert model.optimizer is optimizer
    assert model.train_function is train_function
    assert len(result.lrs) == len(result.losses) == len(result.raw_losses)
    assert 5 <= len(result.lrs) <= 30
    assert result.lrs[0] == pytest.approx(1e-5)
    np.testing.assert_allclose(result.lrs[1:] / result.lrs[:-1], 10 ** (5 / 29), rtol=1e-9)
    assert np.all(np.isfinite(result.losses))
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert result.lrs[0] <= result.valley <= result.lrs[-1]
    # The model still trains with its own train function.
    history = model.fit(dataset(), epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_sweep_stops_when_the_loss_diverges():
    model = compiled_model(keras.optimizers.SGD(0.01))
    result = find_lr(model, dataset(), start_lr=1e-3, end_lr=1e6, num_steps=60)
    assert result.diverged
    assert len(result.lrs) < 60
    assert "stopped at divergence" in str(result)


def test_unbuilt_optimizer_stays_unbuilt_and_layerwise_rates_are_used():
    optimizer = LayerwiseLR(
        keras.optimizers.Adam(OneCycle(1e-3, 100)), multipliers={"block1_.*": 0.1}
    )
    model = compiled_model(optimizer)
    before = [v.numpy() for v in model.variables]
    result = find_lr(model, dataset(), num_steps=12)
    assert not model.optimizer.built
    for old, new in zip(before, model.variables):
        np.testing.assert_array_equal(old, new.numpy())
    assert len(result.lrs) == 12


def test_suggestions_on_a_known_curve():
    lrs = np.logspace(-6, 0, 61)
    # Falls fastest at log10(lr) = -3.05 (between grid points), flat around,
    # then rises from 1e-1.
    log_lr = np.log10(lrs)
    losses = 2.0 - np.tanh((log_lr + 3.05) * 2.0) + np.where(log_lr > -1, (log_lr + 1) * 10, 0)
    result = LRFinderResult.from_losses(lrs, losses, smoothing=0.0)
    np.testing.assert_array_equal(result.losses, losses)
    # 10 ** -3.1: the left end of the steepest segment.
    assert result.suggestion == pytest.approx(lrs[29])
    # The loss falls from the start (index 0) to index 50 (1e-1); fastai's
    # valley picks start - 1 + sections + sections / 2 in the trimmed range.
    trimmed = slice(6, 56)
    start, end = 6 - 1, 50
    sections = (end - start) / 3
    expected = lrs[start + int(sections) + int(sections / 2)]
    assert result.valley == pytest.approx(expected)
    assert lrs[trimmed][0] <= result.valley


def test_smoothing_is_a_debiased_moving_average():
    losses = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    result = LRFinderResult.from_losses(np.logspace(-5, -1, 6), losses, smoothing=0.5)
    np.testing.assert_allclose(result.losses[:2], [1.0, (0.5 * 0.5 * 1.0 + 0.5 * 2.0) / 0.75])


def test_plot_writes_a_png(tmp_path):
    lrs = np.logspace(-6, 0, 40)
    result = LRFinderResult.from_losses(lrs, 2.0 - np.tanh(np.log10(lrs) + 3.0))
    path = result.plot(tmp_path / "lr_find.png")
    assert path == str(tmp_path / "lr_find.png")
    with open(path, "rb") as file:
        assert file.read(8) == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["lr_find.png"]


def test_too_few_steps_before_divergence_is_an_error():
    with pytest.raises(KftError, match="only 3 steps before the loss diverged; at least 5"):
        LRFinderResult.from_losses([1e-3, 1e-2, 1e-1], [1.0, 0.5, 9.0], diverged=True)


def test_bad_input_raises_clear_errors():
    with pytest.raises(KftError, match="needs a compiled model"):
        find_lr(tiny_image_model(), dataset())
    model = compiled_model()
    with pytest.raises(KftError, match="takes a tf.data.Dataset"):
        find_lr(model, random_images(8))
    with pytest.raises(KftError, match="0 < start_lr < end_lr"):
        find_lr(model, dataset(), start_lr=1.0, end_lr=0.1)
    with pytest.raises(KftError, match="diverge must be above 1"):
        find_lr(model, dataset(), diverge=0.5)
    with pytest.raises(KftError, match="the dataset is empty"):
        find_lr(model, dataset().take(0), num_steps=10)


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kft.training.lr_finder import find_lr
    from kft.optimizers import LayerwiseLR
    from tests.training.test_lr_finder import assert_same_state, dataset, state
    from tests.helpers.tiny_models import tiny_image_model

    def sweep(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            model = tiny_image_model()
            model.compile(
                optimizer=LayerwiseLR(keras.optimizers.SGD(0.01, momentum=0.9),
                                      multipliers={"head_.*": 2.0}),
                loss="sparse_categorical_crossentropy")
        before = state(model)
        result = find_lr(model, dataset(), start_lr=1e-4, end_lr=1.0, num_steps=10)
        assert_same_state(before, state(model))
        return result.raw_losses[0]

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # The replicas' losses are averaged, not summed: the first step's loss
    # is close to the single-device one (BatchNorm sees half batches).
    print("ratio", sweep(mirrored) / sweep(tf.distribute.get_strategy()))
    """
)


@pytest.mark.slow
def test_sweep_under_mirrored_strategy_restores_state_and_averages_losses():
    result = run_script(MIRRORED_SCRIPT)
    ratio = float(result.stdout.split("ratio")[-1])
    assert 0.75 < ratio < 1.33
