"""Which kft LoRA layer a plain Keras projection becomes, and adding an adapter to either."""

import keras

from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.lora_dense import LoRADense
from kft.layers.lora_einsum_dense import LoRAEinsumDense

# The kft LoRA layer each plain Keras projection converts to, in place.
LORA_CLASSES = {keras.layers.Dense: LoRADense, keras.layers.EinsumDense: LoRAEinsumDense}


def is_adaptable(layer):
    """Whether LoRA can go on `layer`: a LoRA layer, or a plain Dense/EinsumDense."""
    return isinstance(layer, LoRAAdapters) or type(layer) in LORA_CLASSES


def lora_class_for(layer):
    """The LoRA class `layer` is, or would become."""
    return type(layer) if isinstance(layer, LoRAAdapters) else LORA_CLASSES[type(layer)]


def add_lora_adapter(layer, name, spec, active=None):
    """Adds adapter `name` to `layer`, converting a plain projection in place.

    The new adapter is not activated: a LoRA layer keeps its active adapter,
    a converted one runs `active` (what the rest of its model runs; a name
    it lacks means its base only).

    Args:
        layer: a built LoRA layer, or a built plain `Dense`/`EinsumDense`.
        name: the adapter's name.
        spec: its `AdapterSpec`.
        active: the adapter a converted layer uses.

    Returns:
        The layer, now a LoRA layer.
    """
    if isinstance(layer, LoRAAdapters):
        layer.add_adapter(name, spec)
        return layer
    LORA_CLASSES[type(layer)].convert_in_place(layer, name, spec)
    layer.set_active_adapter(active)
    return layer
