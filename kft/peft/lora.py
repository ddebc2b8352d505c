"""LoRA on any Keras model: apply, switch, combine, merge and unmerge adapters.

The targeted `Dense`/`EinsumDense` layers become `kft.layers.LoRADense` /
`LoRAEinsumDense` in place (the same objects), so this works on functional
models, nested models and the layers inside keras-hub blocks alike.

After anything here changes what trains (`apply_lora`, `set_adapter`), call
`model.compile(...)` again before `fit`: Keras builds the optimizer and the
train step over the trainable variables it finds at compile time.
"""

import contextlib

from keras import ops

from kft.errors import KftError
from kft.layers.lora_adapters import AdapterSpec
from kft.layers.lora_adapters import LoRAAdapters
from kft.layers.lora_adapters import adapters_switched_off
from kft.layers.lora_adapters import check_adapter_name
from kft.layers.lora_conversion import add_lora_adapter
from kft.layers.lora_conversion import is_adaptable
from kft.model_tree import describe_paths
from kft.model_tree import layer_paths
from kft.model_tree import layer_tree
from kft.model_tree import reset_compiled_functions
from kft.peft.trainable import freeze_base
from kft.select import Head
from kft.select import resolve

def apply_lora(
    model,
    targets=None,
    rank=8,
    alpha=16.0,
    dropout=0.0,
    dora=False,
    rslora=False,
    init="kaiming_uniform",
    train_also=None,
    adapter_name="default",
    spec=None,
):
    """Adds a LoRA adapter to `model`, activates it and freezes everything else.

    Args:
        model: a built Keras model (functional, nested, keras-hub).
        targets: which layers get the adapter, in kft's selection language
            (`kft.select`): the `Dense` and `EinsumDense` layers the
            selection covers, e.g. `"query|value"`, `["query", "value"]`,
            `"transformer_layer_0"` (every projection of that block) or
            `"head"`. Default: the attention query and value projections
            of a keras-hub backbone (its `default_lora_layer_names()`),
            else the `Dense` layers of the head.
        rank: rank of the update.
        alpha: scaling numerator: the update is `alpha / rank * A @ B`.
        dropout: dropout on the adapter input during training.
        dora: DoRA (weight-decomposed LoRA).
        rslora: rank-stabilized scaling `alpha / sqrt(rank)`.
        init: `"kaiming_uniform"` or `"gaussian"` initialization of `A`.
        train_also: layers that train fully besides the adapters (e.g. a new
            classification head: `["logits"]`, `"head"`), selected like
            `targets`.
        adapter_name: the adapter's name (several can live on one model).
        spec: the hyperparameters as one `kft.layers.AdapterSpec` (or its
            config dict), instead of `rank` ... `init`.

    Returns:
        A `ParameterCount` (trainable vs total parameters; `print` it).

    Example:
    ```python
    classifier = keras_hub.models.BertTextClassifier.from_preset(
        path, num_classes=2)
    counts = kft.peft.apply_lora(classifier, rank=8, alpha=16,
                                 train_also=["logits"])
    print(counts)  # trainable params: 74,498 || all params: ...
    classifier.compile(...)
    ```
    """
    spec = AdapterSpec.from_arguments(
        spec, rank=rank, alpha=alpha, dropout=dropout, dora=dora, rslora=rslora, init=init
    )
    add_adapter(model, adapter_name, targets=targets, spec=spec)
    set_adapter(model, adapter_name)
    return freeze_base(model, train_also)


def add_adapter(
    model,
    adapter_name,
    targets=None,
    spec=None,
    **shortcuts,
):
    """Adds a named LoRA adapter to the target layers, without activating it.

    Layers that are not LoRA layers yet are converted in place. Arguments as
    `apply_lora`; nothing is frozen or unfrozen here.

    Returns:
        The list of `(path, layer)` that received the adapter.
    """
    check_adapter_name(adapter_name)
    spec = AdapterSpec.from_arguments(spec, **shortcuts)
    chosen = resolve_targets(model, targets)
    owners = [p for p, layer in chosen if adapter_name in _names(layer)]
    if owners:
        raise KftError(
            f"Adapter {adapter_name!r} already exists on {owners[:5]}; pick "
            "another adapter_name or delete_adapter() it first."
        )
    current = active_adapter(model)
    for _, layer in chosen:
        add_lora_adapter(layer, adapter_name, spec, active=current)
    reset_compiled_functions(model)
    return chosen


def resolve_targets(model, targets):
    """The `(path, layer)` pairs LoRA would target (see `apply_lora`)."""
    paths = layer_paths(model)
    candidates = {p: l for p, l in paths.items() if is_adaptable(l)}
    if targets is None:
        return _default_targets(model, paths, candidates)
    try:
        covered = resolve(targets, layer_tree(model)).nodes.values()
    except KftError as error:
        raise KftError(
            f"LoRA targets: {error} Candidate layer paths:\n  " + describe_paths(candidates)
        ) from None
    chosen = [(n.path, n.layer) for n in covered if n.path in candidates]
    if not chosen:
        matched = [f"{n.path} ({type(n.layer).__name__})" for n in covered if n.parent]
        raise KftError(
            f"LoRA targets {targets!r} cover no Dense or EinsumDense layer of model "
            f"'{model.name}' (they match {matched[:10]}). Candidate layer paths:\n  "
            + describe_paths(candidates)
        )
    order = {path: index for index, path in enumerate(candidates)}
    return sorted(chosen, key=lambda pair: order[pair[0]])


def lora_layers(model):
    """The `(path, layer)` pairs of `model`'s LoRA layers."""
    return [(p, l) for p, l in layer_paths(model).items() if isinstance(l, LoRAAdapters)]


def list_adapters(model):
    """The adapters on `model`.

    Returns:
        `{name: {"spec": AdapterSpec of its first layer, "layers": [paths]}}`.
    """
    found = {}
    for path, layer in lora_layers(model):
        for name in layer.adapter_names:
            entry = found.setdefault(name, {"spec": layer.adapter_spec(name), "layers": []})
            entry["layers"].append(path)
    return found


def active_adapter(model):
    """The adapter `model`'s LoRA layers use (None: base only or no LoRA)."""
    for _, layer in lora_layers(model):
        if layer.active_adapter is not None:
            return layer.active_adapter
    return None


def set_adapter(model, adapter_name):
    """Makes `adapter_name` the active adapter of every LoRA layer.

    Layers without that adapter run their base only. `None` switches all
    adapters off (the base model). Recompile before training.

    Args:
        model: a model with LoRA layers.
        adapter_name: an adapter name, or None.
    """
    layers = _require_lora(model)
    if adapter_name is not None:
        _require_adapter(model, adapter_name)
    merged = [p for p, l in layers if l.merged_adapter not in (None, adapter_name)]
    if merged:
        raise KftError(
            f"An adapter is merged into {merged[:5]}; unmerge(model) before "
            "switching adapters."
        )
    for _, layer in layers:
        layer.set_active_adapter(adapter_name)
    reset_compiled_functions(model)


@contextlib.contextmanager
def without_adapters(model):
    """Inside the `with`, `model` computes as its base model: every LoRA
    layer leaves its adapter out (PEFT's `disable_adapter()`).

    Unlike `set_adapter(model, None)`, nothing changes on the model (active
    adapter, what trains, traced functions), so one train step can call the
    model with and without its adapters; no second copy of the weights is
    made. Call the model itself inside (`model(x)`): a `predict` or `fit`
    function traced before the `with` keeps the adapters.

    Args:
        model: a model with LoRA layers, none of them merged.

    Raises:
        KftError: no LoRA layers, or an adapter is merged into a kernel
            (its update is in the base weights then: `unmerge` first).

    Example:
    ```python
    with kft.peft.without_adapters(model):
        base_outputs = model(x, training=False)
    ```
    """
    layers = _require_lora(model)
    merged = [p for p, l in layers if l.merged_adapter is not None]
    if merged:
        raise KftError(
            f"An adapter is merged into {merged[:5]}; its update is part of the base "
            "kernel, so it cannot be left out: unmerge(model) first."
        )
    with adapters_switched_off([layer for _, layer in layers]):
        yield


def delete_adapter(model, adapter_name):
    """Removes adapter `adapter_name` (and its variables) from every layer."""
    _require_adapter(model, adapter_name)
    for _, layer in lora_layers(model):
        if adapter_name in layer.adapter_names:
            layer.delete_adapter(adapter_name)
    reset_compiled_functions(model)


def combine_adapters(model, weights, adapter_name):
    """Adds an adapter whose update is the weighted sum of existing ones.

    The new adapter concatenates the factors (rank = sum of ranks, scale 1),
    so `delta = sum(w_i * delta_i)` exactly, per layer. It is not activated.

    Args:
        model: a model with LoRA layers.
        weights: `{adapter_name: weight}`; weights may be negative.
        adapter_name: the new adapter's name.

    Example:
    ```python
    kft.peft.combine_adapters(model, {"sst2": 0.7, "imdb": 0.3}, "mix")
    kft.peft.set_adapter(model, "mix")
    ```
    """
    if not weights:
        raise KftError("combine_adapters needs at least one adapter weight.")
    check_adapter_name(adapter_name)
    for name in weights:
        _require_adapter(model, name)
    if adapter_name in list_adapters(model):
        raise KftError(f"Adapter {adapter_name!r} already exists.")
    for path, layer in lora_layers(model):
        present = [(n, float(w)) for n, w in weights.items() if n in layer.adapter_names]
        if not present:
            continue
        dora = [n for n, _ in present if layer.adapter_spec(n).dora]
        if dora:
            raise KftError(
                f"Cannot combine DoRA adapters {dora} (layer {path}): their "
                "magnitudes do not add up linearly."
            )
        a_parts, b_parts = [], []
        for name, weight in present:
            variables = layer.adapter_variables(name)
            scale = weight * layer.adapter_spec(name).scaling
            a_parts.append(ops.multiply(variables["lora_a"], scale))
            b_parts.append(ops.convert_to_tensor(variables["lora_b"]))
        a = ops.concatenate(a_parts, axis=-1)
        b = ops.concatenate(b_parts, axis=0)
        rank = int(a.shape[-1])
        layer.add_adapter(adapter_name, AdapterSpec(rank=rank, alpha=float(rank)))
        created = layer.adapter_variables(adapter_name)
        created["lora_a"].assign(a)
        created["lora_b"].assign(b)
    reset_compiled_functions(model)


def merge(model, unload=False):
    """Folds the active adapter into the kernels: same outputs, base-model cost.

    Args:
        model: a model with LoRA layers on a float (not quantized) base.
        unload: also turn the LoRA layers back into plain `Dense` /
            `EinsumDense` layers, dropping all adapters: a plain Keras
            model to serve or save without kft.
    """
    layers = _require_lora(model)
    for _, layer in layers:
        layer.merge()
    if unload:
        for _, layer in layers:
            layer.revert_in_place()
    reset_compiled_functions(model)


def unmerge(model):
    """Takes merged adapters back out of the kernels (to train or switch)."""
    for _, layer in _require_lora(model):
        layer.unmerge()
    reset_compiled_functions(model)


def _names(layer):
    return layer.adapter_names if isinstance(layer, LoRAAdapters) else []


def _default_targets(model, paths, candidates):
    backbones = [(p, l) for p, l in paths.items() if _is_keras_hub_backbone(l)]
    if _is_keras_hub_backbone(model):
        backbones.insert(0, ("", model))
    if backbones:
        prefix, backbone = backbones[0]
        names = set(backbone.default_lora_layer_names())
        chosen = [
            (p, l) for p, l in candidates.items()
            if (not prefix or p.startswith(prefix + "/")) and l.name in names
        ]
        if chosen:
            return chosen
        raise KftError(
            f"The keras-hub backbone '{backbone.name}' has no layers named "
            f"{sorted(names)}; pass targets=. Candidate layer paths:\n  "
            + describe_paths(candidates)
        )
    root = layer_tree(model)
    head = Head().resolve(root).nodes.values()
    chosen = [(p, l) for p, l in candidates.items() if any(n.path == p for n in head)]
    if chosen:
        return chosen
    raise KftError(
        f"Model '{model.name}' has no keras-hub backbone and no Dense layers in a "
        "head, so there are no default LoRA targets; pass targets=. "
        "Candidate layer paths:\n  " + describe_paths(candidates)
    )


def _is_keras_hub_backbone(layer):
    try:
        import keras_hub
    except ImportError:  # kft works without keras-hub for plain models.
        return False
    return isinstance(layer, keras_hub.models.Backbone)


def _require_lora(model):
    layers = lora_layers(model)
    if not layers:
        raise KftError(
            f"Model '{model.name}' has no LoRA layers; call "
            "kft.peft.apply_lora(model, ...) first."
        )
    return layers


def _require_adapter(model, adapter_name):
    adapters = list_adapters(model)
    if adapter_name not in adapters:
        raise KftError(
            f"Model '{model.name}' has no adapter {adapter_name!r}; it has "
            f"{sorted(adapters) or 'none'}."
        )
