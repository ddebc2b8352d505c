"""The pretrained model's outputs and features, for `OutputKL` and `FeatureDistance`.

Two kinds of reference:
- `"adapters_off"`: a model in which nothing but kft LoRA adapters trains is
  its own reference: the same layers run with the adapters switched off
  (`kft.peft.without_adapters`), so no second copy of the weights is held.
  The reference is then the base model, whatever earlier stages did to the
  adapters.
- `"copy"`: otherwise, a frozen copy of the model as it is at `bind` (saved and
  reloaded through `kft.saving`, so LoRA and bottleneck adapters inside
  keras-hub blocks come back too). It costs a second copy of the weights.

`"auto"` picks `"adapters_off"` where it applies, else `"copy"`. Reference
values carry no gradient (`stop_gradient`) and are computed in inference mode
(no dropout; BatchNormalization on its moving statistics).
"""

import os
import tempfile

import keras
import numpy as np
from keras import ops

from kft.errors import KftError
from kft.regularizers.base import Regularizer
from kft.peft.lora import lora_layers
from kft.peft.lora import without_adapters
from kft.training.feature_cache import split_at_head

KINDS = ("auto", "adapters_off", "copy")


def check_kind(kind):
    if kind not in KINDS:
        raise KftError(f"reference must be one of {', '.join(KINDS)}, got {kind!r}.")
    return kind


def adapters_only(model):
    """Whether `model` has active, unmerged LoRA adapters and nothing else trains."""
    layers = [layer for _, layer in lora_layers(model)]
    if not layers or any(layer.merged_adapter is not None for layer in layers):
        return False
    adapter_ids = {
        id(variable)
        for layer in layers if layer.active_adapter in layer.adapter_names
        for variable in layer.adapter_variables(layer.active_adapter).values()
    }
    trainable = model.trainable_variables
    return bool(trainable) and all(id(v) in adapter_ids for v in trainable)


class Reference:
    """What the pretrained model computes on a batch (see the module docstring).

    Args:
        model: the built model being trained.
        kind: `"auto"`, `"adapters_off"` or `"copy"`.
        arrays: a copy's weights from an earlier `arrays()`, to restore instead
            of the model's current ones.
        features: also build the reference feature model (the head's input).
    """

    def __init__(self, model, kind="auto", arrays=None, features=False):
        check_kind(kind)
        if kind == "auto":
            kind = "adapters_off" if adapters_only(model) else "copy"
        if kind == "adapters_off" and not lora_layers(model):
            raise KftError(
                f"reference='adapters_off' needs kft LoRA layers; model {model.name!r} "
                "has none (use 'copy')."
            )
        if kind == "adapters_off":
            with without_adapters(model):  # a merged adapter fails here, not mid-fit
                pass
        self.kind = kind
        self.model = model if kind == "adapters_off" else frozen_copy(model)
        if kind == "copy" and arrays:
            _restore(self.model, arrays)
        self._features = feature_model(self.model) if features else None

    def outputs(self, inputs):
        """The reference model's outputs on `inputs`, without gradient."""
        return self._run(self.model, inputs)

    def features(self, inputs):
        """The reference backbone's features (the head's input) on `inputs`."""
        return self._run(self._features, inputs)

    def arrays(self):
        """The copy's weights, `{"<index>:<path>": array}` (`{}` with adapters off)."""
        if self.kind != "copy":
            return {}
        return {f"{i}:{v.path}": to_numpy(v) for i, v in enumerate(self.model.weights)}

    def _run(self, model, inputs):
        if self.kind == "adapters_off":
            with without_adapters(self.model):
                values = model(inputs, training=False)
        else:
            values = model(inputs, training=False)
        return keras.tree.map_structure(ops.stop_gradient, values)


def feature_model(model):
    """`model`'s layers up to the head's input (`split_at_head`'s first half),
    taking the inputs in the structure `model` does (a tensor, not a list of one)."""
    features = split_at_head(model)[0]
    return keras.Model(model.input, features.output, name=features.name)


def frozen_copy(model):
    """A copy of `model` with its current weights, frozen (inference mode)."""
    from kft import saving

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "reference.keras")
        model.save(path)
        copy = saving.load_model(path, compile=False)
    copy.trainable = False
    return copy


def _restore(copy, arrays):
    keys = [f"{i}:{v.path}" for i, v in enumerate(copy.weights)]
    if sorted(keys) != sorted(arrays):
        missing = sorted(set(keys) - set(arrays))[:3]
        raise KftError(
            "The saved reference weights do not fit the model (missing e.g. "
            f"{missing or 'none'}); the model changed since the stage started."
        )
    for key, variable in zip(keys, copy.weights):
        variable.assign(ops.cast(arrays[key], variable.dtype))


def to_numpy(variable):
    """A variable or tensor as numpy (to save); bfloat16 and other non-numpy
    dtypes become float32."""
    value = np.asarray(ops.convert_to_numpy(variable))
    return value if value.dtype.kind in "fiub" else value.astype("float32")


class ReferenceRegularizer(Regularizer):
    """A regulariser that compares each batch with a pretrained `Reference`
    (`OutputKL`, `FeatureDistance`): its subclasses set `self._reference` in
    `_bind`."""

    needs_inputs = True

    @property
    def reference_kind(self):
        """`"adapters_off"` or `"copy"`, once bound."""
        self._require_bound()
        return self._reference.kind

    def reference_arrays(self):
        self._require_bound()
        return self._reference.arrays()
