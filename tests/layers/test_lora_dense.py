"""LoRADense, and the checks every LoRA layer type must pass (table-driven).

The `check_*` functions live in tests/helpers/lora_checks.py;
tests/layers/test_lora_einsum_dense.py runs them on EinsumDense cases.
"""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.layers import AdapterSpec
from kft.layers import LoRADense
from tests.helpers.lora_checks import OPTIONS
from tests.helpers.lora_checks import check_fit_changes_only_adapters
from tests.helpers.lora_checks import check_identity_at_init
from tests.helpers.lora_checks import check_keras_round_trip
from tests.helpers.lora_checks import check_merged_equals_unmerged
from tests.helpers.lora_checks import check_quantized_base
from tests.helpers.lora_checks import functional
from tests.helpers.lora_checks import randomize_adapter

# Adapter options, as PEFT's test matrix: plain, each variant, and a mix.
def dense_base(activation=None):
    layer = keras.layers.Dense(6, activation=activation, name="proj")
    layer.build((None, 5))
    return layer


def dense_inputs(seed=0):
    return np.random.default_rng(seed).normal(size=(8, 5)).astype("float32")


# (base factory, inputs) per Dense case.
DENSE_CASES = {
    "linear": (dense_base, dense_inputs),
    "softmax": (lambda: dense_base("softmax"), dense_inputs),
}


@pytest.mark.parametrize("case", sorted(DENSE_CASES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_new_adapter_leaves_outputs_unchanged(case, option):
    make_base, make_inputs = DENSE_CASES[case]
    check_identity_at_init(LoRADense, make_base, make_inputs(), OPTIONS[option])


@pytest.mark.parametrize("case", sorted(DENSE_CASES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_merged_equals_unmerged(case, option):
    make_base, make_inputs = DENSE_CASES[case]
    check_merged_equals_unmerged(LoRADense, make_base, make_inputs(), OPTIONS[option])


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_fit_changes_only_adapters(option):
    make_base, make_inputs = DENSE_CASES["softmax"]
    check_fit_changes_only_adapters(LoRADense, make_base, make_inputs(), OPTIONS[option])


@pytest.mark.parametrize("option", ["lora", "dora_rslora_dropout"])
def test_keras_round_trip_keeps_base_and_adapters_apart(option, tmp_path):
    make_base, make_inputs = DENSE_CASES["softmax"]
    check_keras_round_trip(LoRADense, make_base, make_inputs(), OPTIONS[option], tmp_path)


@pytest.mark.parametrize("mode,dora", [("int8", False), ("int8", True), ("int4", False)])
def test_lora_on_quantized_base_trains_saves_and_reloads(mode, dora, tmp_path):
    make_base, make_inputs = DENSE_CASES["linear"]
    check_quantized_base(LoRADense, make_base, make_inputs(), mode, dora, tmp_path)


def test_keras_builtin_lora_on_int8_drifts_on_reload(tmp_path):
    """The gap kft closes: Keras re-quantizes a merged kernel when saving."""
    keras.utils.set_random_seed(0)
    inputs = dense_inputs()
    base = dense_base()
    x = keras.Input((5,))
    model = keras.Model(x, base(x))
    model.quantize("int8")
    base.enable_lora(3)
    base.lora_kernel_b.assign(np.random.default_rng(1).normal(scale=0.3, size=(3, 6)))
    outputs = model.predict(inputs, verbose=0)
    model.save(tmp_path / "keras_lora.keras")
    loaded = keras.models.load_model(tmp_path / "keras_lora.keras")
    drift = np.max(np.abs(loaded.predict(inputs, verbose=0) - outputs))
    assert drift > 1e-3
    assert np.all(loaded.get_layer("proj").lora_kernel_b.numpy() == 0)


def test_update_is_scale_times_x_a_b():
    inputs = dense_inputs()
    for rslora, scale in [(False, 8 / 4), (True, 8 / 2)]:
        lora = LoRADense.from_layer(dense_base(), rank=4, alpha=8, rslora=rslora)
        randomize_adapter(lora)
        assert lora.adapter_spec("default").scaling == scale
        w, b = lora._kernel.numpy(), lora.bias.numpy()
        a = lora.adapter_variables("default")["lora_a"].numpy()
        bb = lora.adapter_variables("default")["lora_b"].numpy()
        expected = inputs @ w + b + scale * inputs @ a @ bb
        np.testing.assert_allclose(lora(inputs), expected, atol=1e-5)


def test_dora_normalizes_direction_per_output_unit():
    inputs = dense_inputs()
    lora = LoRADense.from_layer(dense_base(), rank=4, alpha=8, dora=True)
    variables = lora.adapter_variables("default")
    w = lora._kernel.numpy()
    magnitude = variables["lora_magnitude"].numpy()
    np.testing.assert_allclose(magnitude, np.linalg.norm(w, axis=0), rtol=1e-6)
    randomize_adapter(lora)
    a, b = variables["lora_a"].numpy(), variables["lora_b"].numpy()
    m = variables["lora_magnitude"].numpy()
    direction = w + 2.0 * a @ b
    expected = inputs @ direction * (m / np.linalg.norm(direction, axis=0)) + lora.bias.numpy()
    np.testing.assert_allclose(lora(inputs), expected, atol=1e-5)


@pytest.mark.parametrize("dora", [False, True])
def test_adapted_kernel_is_the_kernel_the_layer_computes_with(dora):
    inputs = dense_inputs()
    lora = LoRADense.from_layer(dense_base(), rank=2, alpha=4, dora=dora)
    randomize_adapter(lora)
    kernel = lora.adapted_kernel().numpy()
    np.testing.assert_allclose(lora(inputs), inputs @ kernel + lora.bias.numpy(), atol=1e-5)
    lora.merge()
    np.testing.assert_allclose(lora.adapted_kernel(), kernel, atol=1e-5)


def test_usable_directly_in_a_new_model(tmp_path):
    layer = LoRADense(4, rank=2, alpha=4, activation="relu", name="new")
    inputs = dense_inputs()
    model = functional(layer, inputs)
    assert [v.name for v in layer.weights] == ["kernel", "bias", "lora_a_default", "lora_b_default"]
    assert [v.name for v in model.trainable_weights] == ["lora_a_default", "lora_b_default"]
    assert layer.get_config()["activation"] == "relu"
    clone = LoRADense.from_config(layer.get_config())
    assert clone.adapter_spec("default") == AdapterSpec(rank=2, alpha=4)
    assert np.all(model.predict(inputs, verbose=0) >= 0)


def test_from_layer_copies_weights_and_leaves_the_dense_alone():
    base = dense_base("relu")
    kernel = np.array(base.kernel.numpy())
    lora = LoRADense.from_layer(base, rank=2)
    np.testing.assert_array_equal(lora._kernel.numpy(), kernel)
    assert lora._kernel is not base._kernel
    assert type(base) is keras.layers.Dense and base.kernel.trainable
    assert lora.output_activation is keras.activations.relu


def test_layer_adapters_add_switch_delete():
    inputs = dense_inputs()
    lora = LoRADense.from_layer(dense_base(), rank=2)
    lora.add_adapter("second", rank=3, alpha=3)
    randomize_adapter(lora, "second")
    base_out = np.array(lora(inputs))  # "default" is active, still zero
    assert lora.adapter_variables("second")["lora_b"].trainable is False
    lora.set_active_adapter("second")
    assert lora.adapter_variables("second")["lora_b"].trainable is True
    assert lora.adapter_variables("default")["lora_b"].trainable is False
    assert not np.allclose(lora(inputs), base_out)
    lora.set_active_adapter(None)
    np.testing.assert_allclose(lora(inputs), base_out, atol=1e-6)
    lora.delete_adapter("second")
    assert lora.adapter_names == ["default"]
    assert [v.name for v in lora.weights] == ["kernel", "bias", "lora_a_default", "lora_b_default"]


def test_in_place_conversion_and_revert_keep_the_object():
    base = dense_base("softmax")
    inputs = dense_inputs()
    model = functional(base, inputs)
    before = model.predict(inputs, verbose=0)
    same = LoRADense.convert_in_place(base, "default", AdapterSpec(rank=2))
    assert same is base and type(base) is LoRADense and model.layers[1] is base
    randomize_adapter(base)
    base.merge()
    merged = model.predict(inputs, verbose=0)
    base.revert_in_place()
    assert type(base) is keras.layers.Dense
    assert [v.name for v in base.weights] == ["kernel", "bias"]
    np.testing.assert_allclose(model(inputs), merged, atol=1e-6)
    assert not np.allclose(merged, before)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"rank": 0}, "rank must be a positive integer"),
        ({"alpha": -1}, "alpha must be a positive number"),
        ({"dropout": 1.5}, "dropout must be in"),
        ({"init": "orthogonal"}, "Unknown LoRA init"),
        ({"adapter_name": "my/adapter"}, "is not valid"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(KftError, match=message):
        LoRADense.from_layer(dense_base(), **kwargs)


def test_merge_on_quantized_base_is_refused():
    base = dense_base()
    base.quantize("int8")
    LoRADense.convert_in_place(base, "default", AdapterSpec(rank=2))
    with pytest.raises(KftError, match="int8 kernel: merging would quantize"):
        base.merge()


def test_only_plain_built_dense_layers_convert():
    class MyDense(keras.layers.Dense):
        pass

    custom = MyDense(3)
    custom.build((None, 2))
    with pytest.raises(KftError, match="is a MyDense"):
        LoRADense.from_layer(custom)
    with pytest.raises(KftError, match="not built yet"):
        LoRADense.from_layer(keras.layers.Dense(3))
    keras_lora = dense_base()
    keras_lora.enable_lora(2)
    with pytest.raises(KftError, match="built-in enable_lora"):
        LoRADense.from_layer(keras_lora)
