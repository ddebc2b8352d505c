"""LoRAEinsumDense: PEFT rank semantics on keras-hub style projections."""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.layers import EinsumFactorization
from kft.layers import LoRAEinsumDense
from tests.helpers.lora_checks import OPTIONS
from tests.helpers.lora_checks import check_fit_changes_only_adapters
from tests.helpers.lora_checks import check_identity_at_init
from tests.helpers.lora_checks import check_keras_round_trip
from tests.helpers.lora_checks import check_merged_equals_unmerged
from tests.helpers.lora_checks import check_quantized_base
from tests.helpers.lora_checks import randomize_adapter


def einsum_case(equation, output_shape, bias_axes, input_shape):
    def make_base():
        layer = keras.layers.EinsumDense(
            equation, output_shape=output_shape, bias_axes=bias_axes, name="proj"
        )
        layer.build((None,) + input_shape)
        return layer

    def make_inputs(seed=0):
        rng = np.random.default_rng(seed)
        return rng.normal(size=(4,) + input_shape).astype("float32")

    return make_base, make_inputs


# The projections of keras MultiHeadAttention (query/key/value and output),
# an ellipsis equation and a plain matrix.
EINSUM_CASES = {
    "attention_query": einsum_case("abc,cde->abde", (None, 2, 3), "de", (5, 8)),
    "attention_output": einsum_case("abcd,cde->abe", (None, 8), "e", (5, 2, 3)),
    "ellipsis": einsum_case("...b,bc->...c", 4, "c", (3, 6)),
    "matrix_no_bias": einsum_case("ab,bc->ac", 4, None, (6,)),
}


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_new_adapter_leaves_outputs_unchanged(case, option):
    make_base, make_inputs = EINSUM_CASES[case]
    check_identity_at_init(LoRAEinsumDense, make_base, make_inputs(), OPTIONS[option])


@pytest.mark.parametrize("case", sorted(EINSUM_CASES))
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_merged_equals_unmerged(case, option):
    make_base, make_inputs = EINSUM_CASES[case]
    check_merged_equals_unmerged(LoRAEinsumDense, make_base, make_inputs(), OPTIONS[option])


@pytest.mark.parametrize("case", ["attention_query", "attention_output"])
@pytest.mark.parametrize("option", ["lora", "dora", "dora_rslora_dropout"])
def test_fit_changes_only_adapters(case, option):
    make_base, make_inputs = EINSUM_CASES[case]
    check_fit_changes_only_adapters(LoRAEinsumDense, make_base, make_inputs(), OPTIONS[option])


@pytest.mark.parametrize("option", ["lora", "dora_rslora_dropout"])
def test_keras_round_trip_keeps_base_and_adapters_apart(option, tmp_path):
    make_base, make_inputs = EINSUM_CASES["attention_query"]
    check_keras_round_trip(LoRAEinsumDense, make_base, make_inputs(), OPTIONS[option], tmp_path)


@pytest.mark.parametrize("mode,dora", [("int8", False), ("int8", True), ("int4", False)])
def test_lora_on_quantized_base_trains_saves_and_reloads(mode, dora, tmp_path):
    make_base, make_inputs = EINSUM_CASES["attention_query"]
    check_quantized_base(LoRAEinsumDense, make_base, make_inputs(), mode, dora, tmp_path)


@pytest.mark.parametrize(
    "equation,kernel_shape,a_shape,b_shape",
    [
        ("abc,cde->abde", (8, 2, 3), (8, 4), (4, 2, 3)),
        ("abcd,cde->abe", (2, 3, 8), (2, 3, 4), (4, 8)),
        ("...b,bc->...c", (6, 4), (6, 4), (4, 4)),
        ("abc,dce->abde", (2, 8, 3), (8, 4), (4, 2, 3)),  # output axis first
    ],
)
def test_kernel_is_input_dims_by_output_dims(equation, kernel_shape, a_shape, b_shape):
    f = EinsumFactorization(equation)
    a = np.random.default_rng(0).normal(size=a_shape)
    b = np.random.default_rng(1).normal(size=b_shape)
    delta = np.einsum(f.to_kernel, a, b)
    assert delta.shape == kernel_shape
    # The update is a rank-4 matrix (input dims) x (output dims).
    order = f.input_axes + f.output_axes
    matrix = np.transpose(delta, order).reshape(int(np.prod(a_shape[:-1])), -1)
    assert np.linalg.matrix_rank(matrix) == 4


def test_rank_means_what_it_means_in_peft():
    """MiniLM's query kernel is 384x12x32: rank 8 = 384*8 + 8*384 parameters."""
    base = keras.layers.EinsumDense("abc,cde->abde", output_shape=(None, 12, 32), bias_axes="de")
    base.build((None, None, 384))
    lora = LoRAEinsumDense.from_layer(base, rank=8)
    sizes = {k: int(np.prod(v.shape)) for k, v in lora.adapter_variables("default").items()}
    assert sizes == {"lora_a": 384 * 8, "lora_b": 8 * 384}
    base.enable_lora(8)  # Keras' built-in: A is (384, 12, 8)
    assert int(np.prod(base.lora_kernel_a.shape)) + int(np.prod(base.lora_kernel_b.shape)) == 37120


def test_update_is_a_matrix_product_over_flattened_dims():
    make_base, make_inputs = EINSUM_CASES["attention_query"]
    inputs = make_inputs()
    lora = LoRAEinsumDense.from_layer(make_base(), rank=2, alpha=4, rslora=True)
    randomize_adapter(lora)
    w = lora._kernel.numpy().reshape(8, 6)
    a = lora.adapter_variables("default")["lora_a"].numpy()
    b = lora.adapter_variables("default")["lora_b"].numpy().reshape(2, 6)
    expected = inputs @ (w + (4 / np.sqrt(2)) * a @ b) + lora.bias.numpy().reshape(6)
    np.testing.assert_allclose(np.reshape(lora(inputs), (4, 5, 6)), expected, atol=1e-5)


def test_dora_magnitude_per_output_unit():
    make_base, make_inputs = EINSUM_CASES["attention_output"]
    inputs = make_inputs()
    lora = LoRAEinsumDense.from_layer(make_base(), rank=2, alpha=4, dora=True)
    randomize_adapter(lora)
    variables = lora.adapter_variables("default")
    w = lora._kernel.numpy().reshape(6, 8)
    a = variables["lora_a"].numpy().reshape(6, 2)
    b = variables["lora_b"].numpy()
    m = variables["lora_magnitude"].numpy()
    assert m.shape == (8,)
    direction = w + 2.0 * a @ b
    flat = inputs.reshape(4, 5, 6)
    expected = flat @ direction * (m / np.linalg.norm(direction, axis=0)) + lora.bias.numpy()
    np.testing.assert_allclose(lora(inputs), expected, atol=1e-5)


def test_config_round_trip():
    layer = LoRAEinsumDense(
        "abc,cde->abde", output_shape=(None, 2, 3), bias_axes="de", rank=2,
        alpha=4, dora=True, activation="gelu",
    )
    layer.build((None, 5, 8))
    clone = LoRAEinsumDense.from_config(layer.get_config())
    clone.build((None, 5, 8))
    assert clone.adapter_spec("default") == layer.adapter_spec("default")
    assert [v.shape for v in clone.weights] == [v.shape for v in layer.weights]
    assert clone.get_config() == {**layer.get_config(), "name": clone.name}


def test_unsupported_equation_is_refused():
    base = keras.layers.EinsumDense("abc,bc->abc", output_shape=(5, 8))
    base.build((None, 5, 8))
    with pytest.raises(KftError, match="every kernel\naxis|every kernel axis"):
        LoRAEinsumDense.from_layer(base)
