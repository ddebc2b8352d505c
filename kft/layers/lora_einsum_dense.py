"""LoRAEinsumDense: a frozen `EinsumDense` plus low-rank adapters.

keras-hub's attention projections are `EinsumDense` layers with kernels such
as `(hidden, heads, head_dim)`. As in PEFT, the kernel is treated as one
matrix `(input dims) x (output dims)`: the input dims are the kernel axes
summed against the input, the output dims those that reach the output. A
rank-8 adapter on MiniLM's 384x12x32 query has 384*8 + 8*384 parameters, not
the 384*12*8 + 8*32 of Keras' built-in `enable_lora`.
"""

import math
import string

import keras
from keras import ops

from kft.errors import KftError
from kft.layers.lora_adapters import _UNSET
from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.lora_adapters import adapter_init_args


class EinsumFactorization:
    """The einsum equations of a low-rank update to an `EinsumDense` kernel.

    Args:
        equation: the layer's equation, e.g. `"abc,cde->abde"`.

    Attributes:
        input_axes: kernel axes summed against the input (`A`'s leading axes).
        output_axes: kernel axes that reach the output (`B`'s trailing axes).
    """

    def __init__(self, equation):
        try:
            lhs, out = equation.replace(" ", "").split("->")
            inp, kernel = lhs.split(",")
        except ValueError:
            raise KftError(f"Cannot read the einsum equation {equation!r}.") from None

        def letters(spec):
            return spec.replace("...", "")

        in_letters, out_letters = letters(inp), letters(out)
        if "." in kernel:
            raise KftError(f"Einsum kernel spec {kernel!r} has an ellipsis.")
        summed = [c for c in kernel if c in in_letters and c not in out_letters]
        produced = [c for c in kernel if c in out_letters and c not in in_letters]
        if len(summed) + len(produced) != len(kernel) or not summed or not produced:
            raise KftError(
                f"EinsumDense equation {equation!r}: LoRA needs every kernel "
                "axis to be either summed against the input or passed to the "
                "output (no axis shared by input, kernel and output)."
            )
        used = set(letters(inp) + kernel + letters(out))
        rank = next(c for c in string.ascii_letters if c not in used)
        a_spec = "".join(summed) + rank
        b_spec = rank + "".join(produced)
        middle = "".join(c for c in out if c not in produced) + rank
        self.input_axes = [kernel.index(c) for c in summed]
        self.output_axes = [kernel.index(c) for c in produced]
        self.apply_a = f"{inp},{a_spec}->{middle}"
        self.apply_b = f"{middle},{b_spec}->{out}"
        self.to_kernel = f"{a_spec},{b_spec}->{kernel}"
        self.scale_outputs = f"{out},{''.join(produced)}->{out}"
        self.scale_kernel = f"{kernel},{''.join(produced)}->{kernel}"


@keras.saving.register_keras_serializable(package="kft")
class LoRAEinsumDense(LoRAAdapters, keras.layers.EinsumDense):
    """An `EinsumDense` whose kernel is frozen and adapted by `scale * A @ B`.

    `A` has shape `input_dims + (rank,)` and `B` has `(rank,) + output_dims`
    (see `EinsumFactorization`); otherwise it behaves as `LoRADense`:
    `alpha / rank` (or rsLoRA) scaling, adapter dropout, DoRA with a
    magnitude per output unit, named adapters, merge and unmerge, a frozen
    float or quantized base saved apart from the adapters.

    Args:
        equation, output_shape: as `keras.layers.EinsumDense`.
        rank, alpha, dropout, dora, rslora, init, adapter_name, adapters,
            active_adapter, merged_adapter: as `kft.layers.LoRADense`.
        activation, **kwargs: as `keras.layers.EinsumDense`.

    Example:
    ```python
    layer = kft.layers.LoRAEinsumDense(
        "abc,cde->abde", output_shape=(None, 4, 8), bias_axes="de", rank=4)
    y = layer(np.ones((2, 5, 32)))  # A: (32, 4), B: (4, 4, 8)
    ```
    """

    _base_class = keras.layers.EinsumDense

    def __init__(
        self,
        equation,
        output_shape,
        rank=8,
        alpha=16.0,
        dropout=0.0,
        dora=False,
        rslora=False,
        init="kaiming_uniform",
        adapter_name="default",
        adapters=None,
        active_adapter=_UNSET,
        merged_adapter=None,
        activation=None,
        **kwargs,
    ):
        super().__init__(equation, output_shape, activation=None, **kwargs)
        specs, active = adapter_init_args(
            rank, alpha, dropout, dora, rslora, init, adapter_name, adapters,
            active_adapter,
        )
        self._init_adapter_state(specs, active, merged_adapter, activation)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_adapters()

    @property
    def factorization(self):
        """The `EinsumFactorization` of this layer's equation."""
        cached = getattr(self, "_factorization", None)
        if cached is None or cached[0] != self.equation:
            cached = (self.equation, EinsumFactorization(self.equation))
            object.__setattr__(self, "_factorization", cached)
        return cached[1]

    @staticmethod
    def adapter_shapes_for(layer, rank):
        """`(A shape, B shape, magnitude shape, fan_in)` for a (plain) EinsumDense."""
        shape = getattr(layer, "original_kernel_shape", None)
        shape = tuple(shape if shape is not None else layer._kernel.shape)
        f = EinsumFactorization(layer.equation)
        input_dims = tuple(shape[i] for i in f.input_axes)
        output_dims = tuple(shape[i] for i in f.output_axes)
        fan_in = math.prod(input_dims)
        return input_dims + (rank,), (rank,) + output_dims, output_dims, fan_in

    def _adapter_shapes(self, rank):
        return self.adapter_shapes_for(self, rank)

    def _apply_factors(self, x, a, b):
        f = self.factorization
        return ops.einsum(f.apply_b, ops.einsum(f.apply_a, x, a), b)

    def _factors_to_kernel(self, a, b):
        return ops.einsum(self.factorization.to_kernel, a, b)

    def _output_norm(self, kernel):
        return ops.sqrt(
            ops.sum(ops.square(kernel), axis=tuple(self.factorization.input_axes))
        )

    def _scale_outputs(self, outputs, factor):
        return ops.einsum(self.factorization.scale_outputs, outputs, factor)

    def _scale_kernel(self, kernel, factor):
        return ops.einsum(self.factorization.scale_kernel, kernel, factor)

    def _dequant_scale(self):
        return self._adjust_scale_for_dequant(self.kernel_scale)
