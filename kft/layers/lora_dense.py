"""LoRADense: a frozen `Dense` plus trainable low-rank adapters."""

import keras
from keras import ops

from kft.layers.lora_adapters import _UNSET
from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.lora_adapters import adapter_init_args


@keras.saving.register_keras_serializable(package="kft")
class LoRADense(LoRAAdapters, keras.layers.Dense):
    """A `Dense` layer whose kernel is frozen and adapted by `scale * A @ B`.

    `output = activation(x W + b + scale * dropout(x) A B)` with `A` of shape
    `(input_dim, rank)` (Kaiming-uniform or Gaussian) and `B` of shape
    `(rank, units)` (zeros), `scale = alpha / rank` (`alpha / sqrt(rank)`
    with `rslora`). With `dora`, the output is instead
    `m * (x (W + scale A B)) / ||W + scale A B||` per output unit, plus `b`,
    with a trainable magnitude `m` initialized to `||W||`.

    The base kernel and bias never train. The base may be quantized
    (`model.quantize("int8")` before adding LoRA): the adapters stay float.
    A layer can hold several named adapters; one is active
    (`set_active_adapter`), and it can be merged into the kernel and
    unmerged (`merge`, `unmerge`). Saving keeps the base kernel and the
    adapters apart.

    Args:
        units: output dimension, as `keras.layers.Dense`.
        rank: rank of the first adapter.
        alpha: scaling numerator (`alpha / rank`).
        dropout: dropout on the adapter's input during training.
        dora: use DoRA (weight-decomposed LoRA).
        rslora: use `alpha / sqrt(rank)` scaling.
        init: `"kaiming_uniform"` or `"gaussian"` initialization of `A`.
        adapter_name: name of the first adapter.
        adapters: `{name: AdapterSpec config}`; overrides the single-adapter
            arguments (used by `from_config`).
        active_adapter: the adapter in use; defaults to the first one.
        merged_adapter: the adapter folded into the saved kernel (set by
            `from_config`, leave it None).
        activation, **kwargs: as `keras.layers.Dense`.

    Example:
    ```python
    layer = kft.layers.LoRADense(64, rank=4, alpha=8, activation="relu")
    y = layer(np.ones((2, 32)))
    # Or wrap an existing, trained Dense (its weights are copied):
    lora = kft.layers.LoRADense.from_layer(trained_dense, rank=8)
    ```
    """

    _base_class = keras.layers.Dense

    def __init__(
        self,
        units,
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
        super().__init__(units, activation=None, **kwargs)
        specs, active = adapter_init_args(
            rank, alpha, dropout, dora, rslora, init, adapter_name, adapters,
            active_adapter,
        )
        self._init_adapter_state(specs, active, merged_adapter, activation)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_adapters()

    @staticmethod
    def adapter_shapes_for(layer, rank):
        """`(A shape, B shape, magnitude shape, fan_in)` for a (plain) Dense."""
        input_dim = layer._kernel.shape[0]
        return (input_dim, rank), (rank, layer.units), (layer.units,), input_dim

    def _adapter_shapes(self, rank):
        return self.adapter_shapes_for(self, rank)

    def _apply_factors(self, x, a, b):
        return ops.matmul(ops.matmul(x, a), b)

    def _factors_to_kernel(self, a, b):
        return ops.matmul(a, b)

    def _output_norm(self, kernel):
        return ops.sqrt(ops.sum(ops.square(kernel), axis=0))

    def _scale_outputs(self, outputs, factor):
        return ops.multiply(outputs, factor)

    def _scale_kernel(self, kernel, factor):
        return ops.multiply(kernel, factor)

    def _dequant_scale(self):
        return self.kernel_scale
