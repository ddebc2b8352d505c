"""Weight interpolation between a pretrained and a fine-tuned model (WiSE-FT).

`interpolate(pretrained, finetuned, alpha)` returns a new model whose every
shared weight is `(1 - alpha) * w0 + alpha * w1` (Wortsman et al., "Robust
fine-tuning of zero-shot models", 2022): alpha 0 is the pretrained model,
1 the fine-tuned one, and the mixes in between often keep more of what the
pretrained model knew (accuracy under distribution shift) at little cost.

Weights are matched by their path in kft's layer tree (`<layer path>/<name>`,
as `kft.select` names variables, e.g. `backbone/block1_conv/kernel`).
What the fine-tuned model has and the pretrained one lacks (a new head)
keeps its fine-tuned values, as do integer variables (seed states) and
whatever `keep` selects.

kft LoRA adapters are the difference from the pretrained model themselves:
the update a layer adds is `scale * A @ B`, so `alpha` multiplies `B` (in
the copy) and the layer adds `alpha` times its update. Such a model needs
no second model (`pretrained_model=None`: the base it sits on is the
pretrained model). A merged adapter is part of the kernel, so a merged
model interpolates like a full fine-tune, against the pretrained model.
"""

import math
import numbers
import os
import tempfile

import keras
import numpy as np
from keras import ops

from kft.errors import KftError
from kft.model_tree import layer_paths
from kft.model_tree import layer_tree
from kft.model_tree import own_weights
from kft.peft.lora import lora_layers

_LISTED = 5  # paths named in an error message


def interpolate(pretrained_model, finetuned_model, alpha, keep=None, allow_extrapolation=False):
    """A new model between `pretrained_model` and `finetuned_model` (WiSE-FT).

    Neither input changes; the result is a copy of `finetuned_model` (saved
    and reloaded through `kft.saving`, not compiled) with its weights mixed.

    Args:
        pretrained_model: the model fine-tuning started from, or `None` for a
            fine-tuned model holding active kft LoRA adapters (then the
            adapters' update is scaled by `alpha` and every other weight
            keeps its fine-tuned value: layers trained fully next to the
            adapters, such as a new head, are not interpolated). Its weights
            are matched to the fine-tuned model's by path; weights only it
            has are ignored.
        finetuned_model: the fine-tuned model.
        alpha: the share of the fine-tuning: 0 gives the pretrained weights
            (with the fine-tuned head where the pretrained model has none),
            1 the fine-tuned ones exactly.
        keep: layers whose weights keep their fine-tuned values although the
            pretrained model has them, in kft's selection language
            (`"head"`: a head that started from a random initialisation).
        allow_extrapolation: accept any finite `alpha` (below 0 or above 1
            goes past the models), not only `[0, 1]`.

    Returns:
        The interpolated `keras.Model`.

    Raises:
        KftError: `alpha` out of range or not a number, an input that is not
            a Keras model, a shared path whose shapes differ, no pretrained
            model for a model without LoRA adapters, models sharing no
            weight, DoRA adapters.

    Example:
    ```python
    pretrained = kft.vision.image_classifier("resnet50", 2, weights="imagenet")
    tuned = kft.saving.load_model("runs/cats_dogs-20260101-120000/model.keras")
    half = kft.interpolate(pretrained, tuned, 0.5, keep="head")
    lora_half = kft.interpolate(None, lora_tuned, 0.5)  # adapter update halved
    ```
    """
    # Checked first: a bad alpha fails before the model is copied.
    alpha = check_alpha(alpha, allow_extrapolation)
    mixer = Interpolation(pretrained_model, finetuned_model, keep=keep)
    return mixer.at(alpha, allow_extrapolation=allow_extrapolation)


def check_alpha(alpha, allow_extrapolation=False):
    """`alpha` as a float, or one `KftError` saying what is wrong with it."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise KftError(f"alpha must be a number, got {alpha!r}.")
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise KftError(f"alpha must be a finite number, got {alpha!r}.")
    if not allow_extrapolation and not 0.0 <= alpha <= 1.0:
        raise KftError(
            f"alpha must be in [0, 1] (0: the pretrained model, 1: the fine-tuned one), got "
            f"{alpha!r}; pass allow_extrapolation=True to go past the models."
        )
    return alpha


class Interpolation:
    """One working copy of a fine-tuned model, set to any mix by `at(alpha)`.

    `interpolate` makes one per call; evaluating several alphas
    (`kft.inference.wise_ft`) reuses one and copies the model only once.

    Args:
        pretrained_model, finetuned_model, keep: as for `interpolate`.

    Attributes:
        model: the working copy (`at` changes its weights in place).
        mixed: paths of the weights mixed as `(1 - alpha) * w0 + alpha * w1`.
        kept: paths of the weights that keep their fine-tuned values (without
            a pretrained model: every weight but the adapters).
        scaled: paths of the LoRA layers whose adapter update `alpha` scales.
    """

    def __init__(self, pretrained_model, finetuned_model, keep=None):
        _check_model(finetuned_model, "finetuned_model")
        if pretrained_model is not None:
            _check_model(pretrained_model, "pretrained_model")
        adapters = _active_adapters(finetuned_model)
        if pretrained_model is None and not adapters:
            raise KftError(
                f"Model {finetuned_model.name!r} holds no active, unmerged kft LoRA adapter, so "
                "the pretrained model cannot be told from it: pass pretrained_model (a merged "
                "adapter is part of the kernel: such a model interpolates like a full fine-tune)."
            )
        if pretrained_model is not None:
            _check_float(finetuned_model)
        start = {} if pretrained_model is None else _pretrained_arrays(pretrained_model)
        weights = weight_paths(finetuned_model)
        adapter_ids = _adapter_variable_ids(finetuned_model)
        kept_ids = _selected_weight_ids(finetuned_model, keep) if keep is not None else set()

        # Planned on the input, so every error comes before the copy.
        self.mixed, self.kept, mismatched = [], [], []
        for path, variable in weights.items():
            if id(variable) in adapter_ids:
                continue  # scaled below, never mixed factor by factor (A @ B is bilinear)
            if path not in start or id(variable) in kept_ids or not _is_float(variable):
                self.kept.append(path)
            elif tuple(start[path].shape) != tuple(variable.shape):
                mismatched.append(f"{path} {tuple(start[path].shape)} vs {tuple(variable.shape)}")
            else:
                self.mixed.append(path)
        if mismatched:
            raise KftError(
                f"The pretrained and fine-tuned models hold weights of different shapes at the "
                f"same path ({len(mismatched)}: {'; '.join(mismatched[:_LISTED])}): rename a "
                "layer whose shape changed (a new head) so it counts as new, or keep= it."
            )
        if pretrained_model is not None and not self.mixed and not adapters:
            raise KftError(
                f"Models {pretrained_model.name!r} and {finetuned_model.name!r} share no weight "
                f"path (the fine-tuned one has e.g. {list(weights)[:3]}, the pretrained one "
                f"{list(start)[:3]}): are they the same architecture, with the same layer names?"
            )
        self.scaled = [path for path, _ in adapters]

        self.model = copy_model(finetuned_model)
        copied = weight_paths(self.model)
        self._pairs = []
        for path in self.mixed:
            end = np.asarray(ops.convert_to_numpy(weights[path]))
            self._pairs.append((copied[path], start[path].astype(end.dtype), end))
        by_layer = dict(_active_adapters(self.model))
        self._adapters = [(by_layer[path], np.asarray(ops.convert_to_numpy(variable)))
                          for path, variable in adapters]

    def at(self, alpha, allow_extrapolation=False):
        """Sets the working copy to `alpha` and returns it.

        Args:
            alpha: as for `interpolate`.
            allow_extrapolation: accept any finite `alpha`.

        Returns:
            `self.model`, its weights mixed at `alpha`.
        """
        alpha = check_alpha(alpha, allow_extrapolation)
        for variable, start, end in self._pairs:
            # The formula as written, in the variable's dtype: alpha 0 and 1
            # give the two models' weights bit for bit.
            variable.assign((1.0 - alpha) * start + alpha * end)
        for variable, end in self._adapters:
            variable.assign(alpha * end)
        return self.model


def weight_paths(model):
    """Every weight of `model` by its kft path (`<layer path>/<variable name>`).

    Keras' own `variable.path` leaves out nested models' names and can
    repeat; kft's layer tree names every layer from the top model. A weight
    shared by several layers is listed once, at its first place.

    Args:
        model: a Keras model.

    Returns:
        A dict `{path: variable}`, in tree order.
    """
    found, seen = {}, set()
    for node in layer_tree(model).walk():
        for variable in own_weights(node.layer):
            if id(variable) not in seen:
                seen.add(id(variable))
                found[node.variable_path(variable)] = variable
    for variable in model.weights:  # owned by no layer the tree walks
        if id(variable) not in seen:
            seen.add(id(variable))
            found[variable.path] = variable
    return found


def scaled_adapters(model):
    """The paths of `model`'s LoRA layers whose update `interpolate` scales:
    those with an active, unmerged adapter (an empty list: a full fine-tune).

    Raises:
        KftError: a DoRA adapter (its update is no multiple of `B`).
    """
    return [path for path, _ in _active_adapters(model)]


def copy_model(model):
    """A copy of `model` with its weights, through a `.keras` file and
    `kft.saving.load_model` (which restores kft layers inside keras-hub
    blocks), not compiled."""
    from kft import saving

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        return saving.load_model(path, compile=False)


def _check_model(model, argument):
    if not isinstance(model, keras.Model):
        raise KftError(f"{argument} must be a Keras model, got {type(model).__name__}.")
    if not model.built or not model.weights:
        raise KftError(f"{argument} {model.name!r} has no weights yet: build or call it first.")


def _check_float(model):
    """Quantized kernels cannot be mixed: their integers and scales belong together."""
    quantized = [path for path, layer in layer_paths(model).items()
                 if getattr(layer, "quantization_mode", None) is not None]
    if quantized:
        raise KftError(
            f"Model {model.name!r} has quantized layers ({', '.join(quantized[:_LISTED])}): "
            "interpolate the float models, then quantize the result (LoRA on a quantized base "
            "needs no pretrained model: pass None)."
        )


def _adapter_layers(model):
    return [layer for _, layer in lora_layers(model)]


def _adapter_variable_ids(model):
    """The ids of every adapter variable (active or not) of `model`'s LoRA layers."""
    ids = set()
    for layer in _adapter_layers(model):
        for name in layer.adapter_names:
            try:
                ids.update(id(v) for v in layer.adapter_variables(name).values())
            except KftError:  # declared, never built: no variables
                pass
    return ids


def _active_adapters(model):
    """`(layer path, B variable)` of each active, unmerged adapter.

    Raises:
        KftError: a DoRA adapter (its magnitude and normalisation make the
            update no multiple of `B`).
    """
    found = []
    for path, layer in lora_layers(model):
        name = layer.active_adapter
        if name is None or layer.merged_adapter is not None or name not in layer.adapter_names:
            continue
        if layer.adapter_spec(name).dora:
            raise KftError(
                f"Layer {path!r} of {model.name!r} holds a DoRA adapter: its update "
                "does not scale linearly. Merge it (kft.peft.merge(model, unload=True)) and "
                "interpolate against the pretrained model."
            )
        variables = layer.adapter_variables(name)
        found.append((path, variables["lora_b"]))
    return found


def _pretrained_arrays(model):
    """The pretrained model's weights as numpy, by path, without its adapters.

    Raises:
        KftError: an active adapter that changes its outputs (its base would
            not be what it computes).
    """
    for path, variable in _active_adapters(model):
        if np.any(ops.convert_to_numpy(variable)):
            raise KftError(
                f"pretrained_model {model.name!r} has a trained LoRA adapter active at "
                f"{path!r}: merge it (kft.peft.merge) or pass the model without it."
            )
    adapter_ids = _adapter_variable_ids(model)
    return {path: np.asarray(ops.convert_to_numpy(variable))
            for path, variable in weight_paths(model).items() if id(variable) not in adapter_ids}


def _selected_weight_ids(model, keep):
    """Every weight (trainable or not: BatchNorm statistics too) of the layers
    `keep` selects."""
    from kft.select import resolve

    selection = resolve(keep, layer_tree(model))
    ids = {id(variable) for variable in selection.variables.values()}
    for node in selection.nodes.values():
        for child in node.walk():
            ids.update(id(variable) for variable in own_weights(child.layer))
    return ids


def _is_float(variable):
    return keras.backend.is_float_dtype(variable.dtype)
