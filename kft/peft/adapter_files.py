"""Adapter files: only the adapter (and `train_also`) weights, keyed by layer path.

An adapter file is a folder, as PEFT's `save_pretrained`:
`adapter_config.json` (method, rank, alpha, targets, the base model's
fingerprint) and `adapter_model.safetensors` (tensors named
`<layer path>/<variable>`). A few hundred kilobytes ship a fine-tune of a
model of any size; the base comes from its own checkpoint.
"""

import hashlib
import json
import os
import pathlib
import re
import shutil
import tempfile

import keras
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

import kft
from kft.errors import KftError
from kft.internal import json_text
from kft.layers.lora_adapters import AdapterSpec
from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.lora_adapters import check_adapter_name
from kft.layers.lora_conversion import add_lora_adapter
from kft.layers.lora_conversion import is_adaptable
from kft.layers.lora_conversion import lora_class_for
from kft.peft.saved_paths import canonical_path
from kft.model_tree import describe_paths
from kft.model_tree import layer_paths
from kft.model_tree import own_weights
from kft.peft.saved_paths import match_saved_paths
from kft.peft.lora import active_adapter
from kft.peft.lora import list_adapters
from kft.peft.lora import lora_layers
from kft.peft.lora import set_adapter
from kft.model_tree import count_parameters
from kft.model_tree import reset_compiled_functions
from kft.peft.trainable import freeze_base
from kft.select import Name

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_FORMAT = "kft-adapter"
_VERSION = 1


def save_adapter(model, path, adapter_name=None, overwrite=False):
    """Writes one LoRA adapter, and the layers trained with it, to `path`.

    The extra layers are those that train besides the adapters (the
    `train_also` of `apply_lora`, or biases unfrozen for BitFit): every
    trainable variable that is not an adapter's.

    Args:
        model: a model with LoRA layers.
        path: the folder to create.
        adapter_name: the adapter to save; the active one by default.
        overwrite: replace an existing folder at `path`.

    Returns:
        The folder, as a `pathlib.Path`.

    Example:
    ```python
    kft.peft.save_adapter(classifier, "runs/sst2-lora")
    ```
    """
    name = adapter_name or active_adapter(model)
    if name is None:
        raise KftError(
            f"Model '{model.name}' has no active adapter; pass adapter_name= "
            f"(adapters: {sorted(list_adapters(model)) or 'none'})."
        )
    targets = {p: l for p, l in lora_layers(model) if name in l.adapter_names}
    if not targets:
        raise KftError(
            f"Model '{model.name}' has no adapter {name!r}; it has "
            f"{sorted(list_adapters(model)) or 'none'}."
        )
    merged = [p for p, l in targets.items() if l.merged_adapter is not None]
    if merged:
        raise KftError(
            f"Adapters are merged into {merged[:5]}; unmerge(model) before "
            "save_adapter so the file holds the adapter, not a changed base."
        )
    extras = _trained_extras(model)
    tensors = {}
    specs = {}
    for path_, layer in targets.items():
        specs[path_] = layer.adapter_spec(name).get_config()
        for key, variable in layer.adapter_variables(name).items():
            tensors[f"{path_}/{key}"] = _numpy(variable)
    for path_, variables in extras.items():
        for variable in variables:
            tensors[f"{path_}/{variable.name}"] = _numpy(variable)
    first = next(iter(specs.values()))
    config = {
        "format": _FORMAT,
        "version": _VERSION,
        "method": "dora" if first["dora"] else "lora",
        "adapter_name": name,
        **first,
        "targets": specs,
        "train_also": {p: [v.name for v in vs] for p, vs in extras.items()},
        "trainable": sorted(
            f"{p}/{v.name}" for p, vs in extras.items() for v in vs if v.trainable
        ),
        "base_model": {
            "name": model.name,
            "class": type(model).__name__,
            **base_fingerprint(model, list(specs), _extra_keys(extras)),
        },
        "kft_version": kft.__version__,
    }
    return _publish(pathlib.Path(path), config, tensors, overwrite)


def load_adapter(model, path, adapter_name=None, activate=True, strict=True):
    """Loads an adapter folder written by `save_adapter` into `model`.

    The paths and shapes must match, and (with `strict`) the target layers'
    base weights must be those the adapter was trained on: an adapter made
    for another model is refused with a KftError. Target layers become LoRA
    layers in place; the `train_also` weights are assigned.

    Args:
        model: the base model (with or without LoRA layers already).
        path: the adapter folder.
        adapter_name: the name to give it; the saved name by default.
        activate: make it the active adapter and freeze everything else
            (as `apply_lora` does), ready to predict or keep training.
        strict: check the base model fingerprint.

    Returns:
        A `ParameterCount` of the model afterwards.

    Example:
    ```python
    classifier = keras_hub.models.BertTextClassifier.from_preset(...)
    kft.peft.load_adapter(classifier, "runs/sst2-lora")
    ```
    """
    folder = pathlib.Path(path)
    config, tensors = _read(folder)
    name = adapter_name or config["adapter_name"]
    check_adapter_name(name)
    if name in list_adapters(model):
        raise KftError(
            f"Model '{model.name}' already has an adapter {name!r}; pass "
            "another adapter_name= or delete_adapter() it first."
        )
    paths = layer_paths(model)
    mapping, missing = match_saved_paths(
        list(config["targets"]) + list(config["train_also"]), paths
    )
    if missing:
        raise KftError(
            f"The adapter at {folder} was made for another model: model "
            f"'{model.name}' has no layers {missing[:10]}. Its layer paths:\n  "
            + describe_paths(paths)
        )
    # From here on, saved paths are translated to this model's paths.
    tensors = {
        _translate(key, mapping): value for key, value in tensors.items()
    }
    specs = {
        mapping[p]: AdapterSpec.from_config(s) for p, s in config["targets"].items()
    }
    train_also = {mapping[p]: names for p, names in config["train_also"].items()}
    _check_shapes(folder, paths, specs, train_also, tensors)
    if strict:
        _check_fingerprint(folder, model, config, list(specs), train_also)

    current = active_adapter(model)
    for path_, spec in specs.items():
        layer = paths[path_]
        add_lora_adapter(layer, name, spec, active=current)
        for key, variable in layer.adapter_variables(name).items():
            variable.assign(tensors[f"{path_}/{key}"])
    for path_, names in train_also.items():
        variables = {v.name: v for v in own_weights(paths[path_])}
        for variable_name in names:
            variables[variable_name].assign(tensors[f"{path_}/{variable_name}"])
    if activate:
        set_adapter(model, name)
        freeze_base(model, [Name(re.escape(path_)) for path_ in train_also] or None)
        # Restore exactly what trained: a BitFit layer trains its bias only.
        trained = set(config.get("trainable", []))
        for path_ in train_also:
            layer = paths[path_]
            saved = _saved_path(path_, mapping)
            for variable in _base_variables(layer):
                variable.trainable = f"{saved}/{variable.name}" in trained
    reset_compiled_functions(model)
    return count_parameters(model)


def read_adapter_config(path):
    """The `adapter_config.json` of the adapter folder `path`, as a dict."""
    return _read(pathlib.Path(path), weights=False)[0]


def base_fingerprint(model, target_paths, excluded_keys=()):
    """Fingerprints of the base model an adapter belongs to.

    `structure` hashes every base variable's path, shape and dtype (adapter
    variables and `excluded_keys` left out); `weights` hashes the values of
    the target layers' base variables, which LoRA never changes, so two
    checkpoints of one architecture differ.

    Args:
        model: the model.
        target_paths: paths of the adapter's target layers.
        excluded_keys: `<path>/<variable>` keys to leave out (the weights an
            adapter file carries itself).

    Returns:
        `{"structure": hex digest, "weights": hex digest}`.
    """
    excluded = set(excluded_keys)
    structure = hashlib.sha256()
    weights = hashlib.sha256()
    paths = layer_paths(model)
    targets = set(target_paths)
    for path_, layer in paths.items():
        for variable in _base_variables(layer):
            key = f"{path_}/{variable.name}"
            if key in excluded:
                continue
            # Auto-numbered names differ between instances of one model.
            key = canonical_path(key)
            structure.update(
                f"{key}:{tuple(variable.shape)}:{variable.dtype};".encode()
            )
            if path_ in targets:
                weights.update(key.encode())
                weights.update(np.ascontiguousarray(_numpy(variable)).tobytes())
    return {"structure": structure.hexdigest(), "weights": weights.hexdigest()}


def _check_shapes(folder, paths, specs, train_also, tensors):
    problems = []
    for path_, spec in specs.items():
        layer = paths[path_]
        if not is_adaptable(layer):
            problems.append(f"{path_} is a {type(layer).__name__}, not Dense/EinsumDense")
            continue
        a, b, magnitude, _ = lora_class_for(layer).adapter_shapes_for(layer, spec.rank)
        expected = {"lora_a": a, "lora_b": b}
        if spec.dora:
            expected["lora_magnitude"] = magnitude
        for key, shape in expected.items():
            problems += _shape_problem(tensors, f"{path_}/{key}", shape)
    for path_, names in train_also.items():
        variables = {v.name: v for v in own_weights(paths[path_])}
        for variable_name in names:
            if variable_name not in variables:
                problems.append(f"{path_} has no variable {variable_name!r}")
                continue
            problems += _shape_problem(
                tensors, f"{path_}/{variable_name}", variables[variable_name].shape
            )
    if problems:
        raise KftError(
            f"The adapter at {folder} was made for another model; shapes do "
            "not match:\n  " + "\n  ".join(problems[:20])
        )


def _translate(key, mapping):
    path_, _, variable = key.rpartition("/")
    return f"{mapping.get(path_, path_)}/{variable}"


def _saved_path(path_, mapping):
    """The saved path that `mapping` translated to model path `path_`."""
    return next((saved for saved, mine in mapping.items() if mine == path_), path_)


def _shape_problem(tensors, key, shape):
    if key not in tensors:
        return [f"{key} is missing from the adapter file"]
    if tuple(tensors[key].shape) != tuple(shape):
        return [f"{key}: file {tuple(tensors[key].shape)} vs model {tuple(shape)}"]
    return []


def _check_fingerprint(folder, model, config, target_paths, train_also):
    saved = config["base_model"]
    extras = [f"{p}/{n}" for p, names in train_also.items() for n in names]
    current = base_fingerprint(model, target_paths, extras)
    merged = [p for p, l in lora_layers(model) if l.merged_adapter is not None]
    if merged:
        raise KftError(
            f"Adapters are merged into {merged[:5]}; unmerge(model) before "
            "loading another adapter (the base kernels are changed while merged)."
        )
    if current["structure"] != saved["structure"]:
        raise KftError(
            f"The adapter at {folder} was made for another model: it was "
            f"trained on '{saved['name']}' ({saved['class']}), whose layers, "
            f"weight shapes or dtypes differ from model '{model.name}''s "
            "(another architecture, or a quantized vs float base?). Load it "
            "into the model it was trained on (or pass strict=False)."
        )
    if current["weights"] != saved["weights"]:
        raise KftError(
            f"The adapter at {folder} was made for another model: the base "
            f"weights of its target layers differ from model '{model.name}''s "
            f"(trained on '{saved['name']}'; another checkpoint, or a "
            "quantized vs float base?). Load it into the base it was trained "
            "on, or pass strict=False to load it anyway."
        )


def _trained_extras(model):
    """`{path: [variables]}` that train besides the adapters."""
    trainable = {id(v) for v in model.trainable_weights}
    extras = {}
    for path_, layer in layer_paths(model).items():
        if isinstance(layer, LoRAAdapters):
            chosen = [v for v in layer.base_variables() if id(v) in trainable]
        else:
            own = own_weights(layer)
            # A trained layer's non-trainable state (BatchNorm statistics)
            # belongs to it as well.
            chosen = own if any(id(v) in trainable for v in own) else []
        if chosen:
            extras[path_] = chosen
    return extras


def _extra_keys(extras):
    return [f"{p}/{v.name}" for p, vs in extras.items() for v in vs]


def _base_variables(layer):
    if isinstance(layer, LoRAAdapters):
        return layer.base_variables()
    return own_weights(layer)


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _publish(folder, config, tensors, overwrite):
    if folder.exists() and not overwrite:
        raise KftError(
            f"{folder} already exists; pick a new folder or pass overwrite=True."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE))
        (staging / CONFIG_FILE).write_text(json_text.dumps(config))
        if folder.exists():
            retired = folder.with_name(f".{folder.name}.old-{os.getpid()}")
            os.rename(folder, retired)
            os.rename(staging, folder)
            shutil.rmtree(retired)
        else:
            os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _read(folder, weights=True):
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise KftError(
            f"{folder} is not an adapter folder: {CONFIG_FILE} is missing "
            "(write one with kft.peft.save_adapter)."
        )
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise KftError(f"{config_file} is not valid JSON: {error}.") from None
    if config.get("format") != _FORMAT or config.get("version") != _VERSION:
        raise KftError(
            f"{config_file} is not a kft adapter (format "
            f"{config.get('format')!r} version {config.get('version')!r}); "
            f"expected {_FORMAT!r} version {_VERSION}."
        )
    if not weights:
        return config, None
    weights_file = folder / WEIGHTS_FILE
    if not weights_file.is_file():
        raise KftError(f"{folder} has no {WEIGHTS_FILE}.")
    return config, load_file(str(weights_file))
