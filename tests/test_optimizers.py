"""Tests of kft.optimizers.LayerwiseLR: exact per-variable rates and decay."""

import re
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft.errors import KftError
from kft.optimizers import LayerwiseLR
from kft.schedules import OneCycle
from kft.schedules import WarmupDecay
from tests.helpers.process import run_script

X = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
Y = np.random.default_rng(1).normal(size=(32, 3)).astype("float32")


def branches_model(names=("branch_a", "branch_b")):
    """Parallel zero-initialised Dense branches whose outputs are summed.

    Every branch sees the same input and adds to the same output, so all get
    the same gradient at every step: a branch whose rate is half another's
    must hold exactly half its weights.
    """
    x = keras.Input((4,))
    outputs = [
        keras.layers.Dense(3, kernel_initializer="zeros", name=name)(x) for name in names
    ]
    return keras.Model(x, keras.layers.Add()(outputs))


def kernel(model, name):
    return model.get_layer(name).kernel.numpy()


@pytest.mark.parametrize(
    "make",
    [
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        lambda: keras.optimizers.Adam(0.01),
        lambda: keras.optimizers.Lion(0.001),
    ],
    ids=["sgd_momentum", "adam", "lion"],
)
def test_group_at_half_rate_moves_exactly_half_as_far(make):
    model = branches_model()
    optimizer = LayerwiseLR(make(), multipliers={"branch_b": 0.5})
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0)

    a, b = kernel(model, "branch_a"), kernel(model, "branch_b")
    assert np.count_nonzero(a) > a.size // 2
    np.testing.assert_array_equal(b, a / 2)
    assert optimizer.multiplier(model.get_layer("branch_b").kernel) == 0.5
    assert optimizer.multiplier(model.get_layer("branch_a").kernel) == 1.0


def test_layer_decay_and_lr_range_spread_rates_over_groups():
    model = branches_model(("low", "middle", "top"))
    groups = [model.get_layer(name) for name in ("low", "middle", "top")]

    decayed = LayerwiseLR(keras.optimizers.SGD(0.1), layer_decay=0.5, groups=groups)
    decayed.build(model.trainable_variables)
    assert [decayed.multiplier(layer.kernel) for layer in groups] == [0.25, 0.5, 1.0]
    assert decayed.variable_multipliers["low/bias"] == 0.25

    spread = LayerwiseLR(keras.optimizers.SGD(0.1), lr_range=(0.01, 1.0), groups=groups)
    spread.build(model.trainable_variables)
    np.testing.assert_allclose(
        [spread.multiplier(layer.kernel) for layer in groups], [0.01, 0.1, 1.0], rtol=1e-12
    )

    # An explicit multiplier, by group name or path, wins over the group's rate.
    mixed = LayerwiseLR(
        keras.optimizers.SGD(0.1),
        layer_decay=0.5,
        multipliers={"group_1": 2.0, "top/bias": 0.0},
        groups=[[groups[0]], [groups[1]], [groups[2]]],
    )
    mixed.build(model.trainable_variables)
    assert mixed.multiplier(groups[0].kernel) == 0.25
    assert mixed.multiplier(groups[1].kernel) == 2.0
    assert mixed.multiplier(groups[2].kernel) == 1.0
    assert mixed.multiplier(groups[2].bias) == 0.0


def test_layer_decay_over_the_models_layer_groups(tmp_path):
    from kft.freezing import layer_groups
    from tests.helpers.tiny_models import random_images
    from tests.helpers.tiny_models import tiny_image_model

    model = tiny_image_model()
    groups = layer_groups(model)
    optimizer = LayerwiseLR(
        keras.optimizers.SGD(0.01),
        layer_decay=0.5,
        multipliers={"head": 4.0, "backbone/block2_conv/bias": 3.0},
        model=model,
    )
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    before = [v.numpy() for v in model.trainable_variables]
    model.fit(*random_images(16), batch_size=8, epochs=1, verbose=0)

    for depth, group in enumerate(reversed(groups[:-1]), start=1):
        for variable in group.variables:
            expected = 3.0 if variable.path == "block2_conv/bias" else 0.5**depth
            assert optimizer.multiplier(variable) == expected, variable.path
    assert groups[-1].name == "head"
    assert {optimizer.multiplier(v) for v in groups[-1].variables} == {4.0}
    for variable, value in zip(model.trainable_variables, before):
        assert not np.array_equal(variable.numpy(), value), variable.path

    # Reloaded without the model, the rates come back by variable path.
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.optimizer.variable_multipliers == optimizer.variable_multipliers
    for original, reloaded in zip(model.trainable_variables, loaded.trainable_variables):
        assert loaded.optimizer.multiplier(reloaded) == optimizer.multiplier(original)


def test_adam_rates_equal_separate_adams_at_scaled_rates():
    def stacked():
        keras.utils.set_random_seed(3)
        return keras.Sequential(
            [
                keras.Input((4,)),
                keras.layers.Dense(8, activation="tanh", name="bottom"),
                keras.layers.Dense(8, activation="tanh", name="middle"),
                keras.layers.Dense(3, name="top"),
            ]
        )

    base = 0.01
    scales = {"bottom": 0.05, "middle": 0.3, "top": 1.0}
    layered_model, reference_model = stacked(), stacked()
    layered = LayerwiseLR(keras.optimizers.Adam(base), multipliers=scales)
    # The wrapper multiplies the float32 rate by the multiplier in float32.
    reference = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(
            keras.optimizers.Adam(base),
            {
                f".*{name}/.*": keras.optimizers.Adam(float(np.float32(base) * np.float32(scale)))
                for name, scale in scales.items()
            },
        )
    )
    loss = keras.losses.MeanSquaredError()
    for model, optimizer in ((layered_model, layered), (reference_model, reference)):
        for step in range(5):
            x, y = X[step * 6 : step * 6 + 6], Y[step * 6 : step * 6 + 6]
            with tf.GradientTape() as tape:
                value = loss(y, model(x))
            grads = tape.gradient(value, model.trainable_variables)
            optimizer.apply(grads, model.trainable_variables)

    for name in scales:
        np.testing.assert_array_equal(
            kernel(layered_model, name), kernel(reference_model, name), err_msg=name
        )
    # The rates really differ: each layer moved, and not like the plain rate.
    assert not np.array_equal(kernel(layered_model, "bottom"), kernel(stacked(), "bottom"))


def test_multiplier_zero_leaves_group_bit_identical():
    model = branches_model(("frozen", "trained"))
    for layer in model.layers[1:3]:
        layer.kernel.assign(np.random.default_rng(2).normal(size=(4, 3)))
    before = [w.numpy() for w in model.get_layer("frozen").weights]
    trained_before = kernel(model, "trained")
    optimizer = LayerwiseLR(
        keras.optimizers.AdamW(0.01, weight_decay=0.1), multipliers={"frozen": 0.0}
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0)

    for weight, value in zip(model.get_layer("frozen").weights, before):
        np.testing.assert_array_equal(weight.numpy(), value)
    assert not np.array_equal(kernel(model, "trained"), trained_before)


def decay_model():
    inputs = keras.Input((5,), dtype="int32")
    position_ids = keras.Input((5,), dtype="int32")
    tokens = keras.layers.Embedding(10, 4, name="token_embedding")(inputs)
    positions = keras.layers.Embedding(5, 4, name="position_embedding")(position_ids)
    x = keras.layers.Add()([tokens, positions])
    x = keras.layers.LayerNormalization(name="layer_norm")(x)
    x = keras.layers.Dense(4, name="dense")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.RMSNormalization(name="rms_norm")(x)
    return keras.Model([inputs, position_ids], x)


def test_weight_decay_skips_biases_norms_and_position_tables_by_default():
    model = decay_model()
    for variable in model.trainable_variables:
        variable.assign(np.random.default_rng(4).uniform(1, 2, size=variable.shape))
    before = {v.path: v.numpy() for v in model.trainable_variables}
    lr, wd = 0.5, 0.25
    optimizer = LayerwiseLR(
        keras.optimizers.SGD(lr), weight_decay=wd, multipliers={"token_embedding": 0.5}
    )
    # Zero gradients: whatever changes, changes by weight decay alone.
    optimizer.apply(
        [np.zeros(v.shape, "float32") for v in model.trainable_variables],
        model.trainable_variables,
    )

    after = {v.path: v.numpy() for v in model.trainable_variables}
    decayed = {"token_embedding/embeddings": lr * 0.5, "dense/kernel": lr}
    for path, value in before.items():
        if path in decayed:
            rate = np.float32(decayed[path])
            np.testing.assert_array_equal(after[path], value - value * np.float32(wd) * rate)
        else:
            np.testing.assert_array_equal(after[path], value, err_msg=path)
    assert set(before) - set(decayed) == {
        "position_embedding/embeddings",
        "layer_norm/gamma",
        "layer_norm/beta",
        "dense/bias",
        "bn/gamma",
        "bn/beta",
        "rms_norm/scale",
    }


def test_norms_are_told_by_type_on_the_model_and_kept_on_reload(tmp_path):
    # An RMSNorm named without "norm": only its type says what it is.
    inputs = keras.Input((4,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    outputs = keras.layers.RMSNormalization(name="final")(x)
    model = keras.Model(inputs, outputs)
    optimizer = LayerwiseLR(keras.optimizers.SGD(0.1), weight_decay=0.1, model=model)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, X, batch_size=8, epochs=1, verbose=0)

    def decayed(optimizer, model):
        return {v.path for v in model.trainable_variables
                if optimizer._var_key(v) in optimizer._decayed}

    assert decayed(optimizer, model) == {"dense/kernel"}
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert loaded.optimizer.get_config()["no_decay_variables"] == ["dense/bias", "final/scale"]
    assert decayed(loaded.optimizer, loaded) == {"dense/kernel"}


def test_no_decay_patterns_are_configurable():
    model = decay_model()
    optimizer = LayerwiseLR(keras.optimizers.SGD(0.1), weight_decay=0.1, no_decay=r"kernel$")
    optimizer.build(model.trainable_variables)
    decayed = {
        v.path for v in model.trainable_variables if optimizer._var_key(v) in optimizer._decayed
    }
    assert "dense/kernel" not in decayed
    assert {"dense/bias", "bn/gamma", "position_embedding/embeddings"} <= decayed


def test_adamw_weight_decay_is_taken_over_exactly():
    plain_model, wrapped_model = branches_model(), branches_model()
    for model in (plain_model, wrapped_model):
        for layer in model.layers[1:3]:
            layer.kernel.assign(np.full((4, 3), 0.5))
            layer.bias.assign(np.full((3,), 0.5))
    plain = keras.optimizers.AdamW(0.01, weight_decay=0.2)
    wrapped = LayerwiseLR(keras.optimizers.AdamW(0.01, weight_decay=0.2), no_decay=())
    assert wrapped.get_config()["weight_decay"] == 0.2
    for model, optimizer in ((plain_model, plain), (wrapped_model, wrapped)):
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)

    assert not np.array_equal(kernel(plain_model, "branch_a"), np.full((4, 3), 0.5))
    for plain_weight, wrapped_weight in zip(plain_model.weights, wrapped_model.weights):
        np.testing.assert_array_equal(plain_weight.numpy(), wrapped_weight.numpy())


def test_group_unfrozen_later_trains_at_its_rate():
    model = branches_model(("branch_a", "branch_b", "branch_c"))
    optimizer = LayerwiseLR(keras.optimizers.SGD(0.05), multipliers={"branch_b": 0.5})
    model.compile(optimizer=optimizer, loss="mse")
    # Gradual unfreezing: build over every variable that may train, freeze.
    optimizer.build(model.trainable_variables)
    for name in ("branch_b", "branch_c"):
        model.get_layer(name).trainable = False
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert np.abs(kernel(model, "branch_a")).min() > 0
    assert not kernel(model, "branch_b").any() and not kernel(model, "branch_c").any()

    for name in ("branch_b", "branch_c"):
        model.get_layer(name).trainable = True
    model.make_train_function(force=True)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    b, c = kernel(model, "branch_b"), kernel(model, "branch_c")
    assert np.abs(c).min() > 0
    np.testing.assert_array_equal(b, c / 2)


def test_one_cycle_drives_momentum_and_beta_1():
    schedule = OneCycle(0.1, total_steps=4, moms=(0.95, 0.5, 0.9))
    grads = [np.array([1.0, -2.0], "float32")]

    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = LayerwiseLR(keras.optimizers.SGD(schedule, momentum=0.9))
    velocity, expected = np.zeros(2, "float32"), np.zeros(2, "float32")
    for step in range(3):
        optimizer.apply(grads, [variable])
        lr, momentum = np.float32(schedule(step)), np.float32(schedule.momentum(step))
        velocity = velocity * momentum - grads[0] * lr
        expected = expected + velocity
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6)
    assert optimizer.inner_optimizer.momentum == 0.9  # the config keeps its float

    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = LayerwiseLR(keras.optimizers.Adam(schedule, epsilon=1e-7))
    m, v, expected = np.zeros(2), np.zeros(2), np.zeros(2)
    for step in range(3):
        optimizer.apply(grads, [variable])
        lr, beta_1 = float(schedule(step)), float(schedule.momentum(step))
        m = m + (grads[0] - m) * (1 - beta_1)
        v = v + (grads[0] ** 2 - v) * (1 - 0.999)
        alpha = lr * np.sqrt(1 - 0.999 ** (step + 1)) / (1 - beta_1 ** (step + 1))
        expected = expected - m * alpha / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5)


def test_save_load_restores_optimizer_rates_and_schedule(tmp_path):
    model = branches_model(("low", "top"))
    schedule = WarmupDecay(0.02, total_steps=40, warmup=4, decay="cosine")
    optimizer = LayerwiseLR(
        keras.optimizers.Adam(schedule),
        layer_decay=0.25,
        weight_decay=0.01,
        groups=[model.get_layer("low"), model.get_layer("top")],
    )
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)

    loaded = keras.models.load_model(path)
    restored = loaded.optimizer
    assert isinstance(restored, LayerwiseLR)
    assert isinstance(restored.inner_optimizer, keras.optimizers.Adam)
    assert isinstance(restored.inner_optimizer._learning_rate, WarmupDecay)
    assert restored.inner_optimizer._learning_rate.get_config() == schedule.get_config()
    assert restored.get_config() == optimizer.get_config()
    assert restored.multiplier(loaded.get_layer("low").kernel) == 0.25
    assert restored.multiplier(loaded.get_layer("top").kernel) == 1.0
    assert int(restored.iterations) == 4
    assert len(restored.variables) == len(optimizer.variables)
    for saved, reloaded in zip(optimizer.variables, restored.variables):
        np.testing.assert_array_equal(saved.numpy(), reloaded.numpy())

    for trained in (model, loaded):
        trained.fit(X, Y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    for original, reloaded in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(original.numpy(), reloaded.numpy())


def test_config_round_trip_by_path_without_groups():
    model = branches_model()
    optimizer = LayerwiseLR("adam", multipliers={"branch_b": 0.5})
    optimizer.build(model.trainable_variables)
    copy = LayerwiseLR.from_config(optimizer.get_config())
    copy.build(model.trainable_variables)
    assert copy.multiplier(model.get_layer("branch_b").kernel) == 0.5
    assert copy.variable_multipliers == {
        "branch_a/kernel": 1.0,
        "branch_a/bias": 1.0,
        "branch_b/kernel": 0.5,
        "branch_b/bias": 0.5,
    }


def test_learning_rate_and_iterations_are_the_wrapped_optimizers():
    optimizer = LayerwiseLR(keras.optimizers.SGD(0.1))
    optimizer.learning_rate = 0.02
    assert float(optimizer.inner_optimizer.learning_rate) == pytest.approx(0.02)
    assert optimizer.iterations is optimizer.inner_optimizer.iterations


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layer_decay": 0.9}, "need the model's layer groups"),
        ({"layer_decay": 1.5, "groups": [[]]}, "layer_decay must be in (0, 1]"),
        ({"layer_decay": 0.9, "lr_range": (0.1, 1.0)}, "not both"),
        ({"lr_range": (1.0, 0.1), "groups": [[]]}, "0 < lowest <= highest"),
        ({"multipliers": {"dense": -1}}, "must be a number of 0 or more"),
        ({"multipliers": {"[": 1.0}}, "not a valid regular expression"),
        ({"no_decay": ["("]}, "no_decay ['(']: name:( is not a valid regular expression"),
        ({"no_decay": [keras.layers.Dense]}, "no_decay must be a selection string"),
        ({"weight_decay": -0.1}, "weight_decay must be 0 or more"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(KftError, match=re.escape(message)):
        LayerwiseLR(keras.optimizers.SGD(0.1), **kwargs)


def test_multiplier_key_matching_nothing_is_an_error():
    model = branches_model()
    optimizer = LayerwiseLR(keras.optimizers.SGD(0.1), multipliers={"encoder": 0.5})
    message = "'encoder' is no layer group name and matches no variable path (paths look like "
    with pytest.raises(KftError, match=re.escape(message + "branch_a/kernel")):
        optimizer.build(model.trainable_variables)


def test_wrapping_a_used_or_wrapped_optimizer_is_an_error():
    used = keras.optimizers.SGD(0.1)
    used.build([keras.Variable(np.zeros(2))])
    with pytest.raises(KftError, match="already built"):
        LayerwiseLR(used)
    with pytest.raises(KftError, match="cannot wrap a LayerwiseLR"):
        LayerwiseLR(LayerwiseLR(keras.optimizers.SGD(0.1)))
    with pytest.raises(KftError, match="has no beta_1 or momentum"):
        LayerwiseLR(keras.optimizers.SGD(OneCycle(0.1, 10)))


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import numpy as np, tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from kft.optimizers import LayerwiseLR
    from kft.schedules import OneCycle
    from tests.test_optimizers import X, Y, branches_model, kernel

    def half(strategy, jit_compile):
        with strategy.scope():
            model = branches_model()
            optimizer = LayerwiseLR(
                keras.optimizers.SGD(OneCycle(0.05, 8), momentum=0.9),
                multipliers={"branch_b": 0.5})
            model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
        model.fit(X, Y, batch_size=8, epochs=2, verbose=0)
        a, b = kernel(model, "branch_a"), kernel(model, "branch_b")
        return bool(np.abs(a).min() > 0 and np.array_equal(b, a / 2))

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print("replicas", mirrored.num_replicas_in_sync)
    print("mirrored", half(mirrored, False))
    print("jit", half(tf.distribute.get_strategy(), True))
    """
)


@pytest.mark.slow
def test_exact_rates_under_mirrored_strategy_and_jit_compile():
    result = run_script(DISTRIBUTED_SCRIPT)
    lines = result.stdout.split("\n")
    assert "replicas 2" in lines
    assert "mirrored True" in lines
    assert "jit True" in lines
