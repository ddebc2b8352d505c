"""What trains under parameter-efficient fine-tuning, and how much of it."""

import dataclasses

import keras
import numpy as np

from kft.layers.bottleneck_adapter import BottleneckAdapter
from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.soft_prompt import SoftPrompt
from kft.peft.layer_paths import layer_paths
from kft.peft.layer_paths import select_layers
from kft.peft.layer_paths import sublayers


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters of a model.

    Attributes:
        trainable: parameters the optimizer updates.
        total: all weights (base, adapters and head).
    """

    trainable: int
    total: int

    @property
    def fraction(self):
        """`trainable / total`."""
        return self.trainable / self.total if self.total else 0.0

    def __str__(self):
        return (
            f"trainable params: {self.trainable:,} || all params: "
            f"{self.total:,} || trainable%: {100 * self.fraction:.4f}"
        )


def count_parameters(model):
    """Counts `model`'s trainable and total parameters.

    Args:
        model: a Keras model.

    Returns:
        A `ParameterCount`.
    """

    def size(variables):
        return int(sum(np.prod(v.shape) for v in variables))

    return ParameterCount(size(model.trainable_weights), size(model.weights))


def train_only(model, layers):
    """Freezes all of `model` except `layers` (LoRA layers keep their base frozen).

    Layers that contain a kept layer keep `trainable=True` with their own
    variables frozen, so the kept layer's variables still reach
    `model.trainable_weights`; every other layer gets `trainable=False`
    (BatchNormalization included, so it runs in inference mode).

    Args:
        model: the model.
        layers: the layers to train.
    """
    keep = {id(layer) for layer in layers}
    model.trainable = True

    def visit(layer):
        if id(layer) in keep:
            layer.trainable = True
            return True
        contains = [visit(child) for child in sublayers(layer)]
        if not any(contains):
            layer.trainable = False
            return False
        for variable in layer._trainable_variables:
            variable.trainable = False
        return True

    visit(model)


def peft_layers(model):
    """The layers PEFT trains: LoRA layers, bottleneck adapters, soft prompts."""
    kinds = (LoRAAdapters, BottleneckAdapter, SoftPrompt)
    return [layer for layer in layer_paths(model).values() if isinstance(layer, kinds)]


def freeze_base(model, train_also=None):
    """Freezes everything except the PEFT layers and `train_also`.

    The PEFT layers are LoRA layers (only their active adapter trains),
    bottleneck adapters and soft prompts. `apply_lora` and friends do this
    already; call it again after `keras.models.load_model`: Keras restores a
    frozen flag on the layers it rebuilds from config, but the sublayers that
    keras-hub blocks create in `build()` come back trainable.

    Args:
        model: the model.
        train_also: layers that train fully as well: a regular expression
            on layer paths or a list of name suffixes.

    Returns:
        A `ParameterCount`.
    """
    keep = peft_layers(model)
    if train_also is not None:
        keep += [layer for _, layer in select_layers(model, train_also, "train_also")]
    train_only(model, keep)
    return count_parameters(model)


def reset_compiled_functions(model):
    """Drops traced train/test/predict functions after the forward pass changed.

    Merging, unmerging and switching adapters change what a layer computes;
    functions traced before would keep the old graph.
    """
    for layer in [model] + list(model._flatten_layers(include_self=False)):
        if isinstance(layer, keras.Model):
            layer.train_function = None
            layer.test_function = None
            layer.predict_function = None
