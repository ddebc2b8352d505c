"""`freeze` and `unfreeze`: change what trains, consistently at every level.

Keras 3 has a trainable flag on every layer and on every variable, and
`layer.trainable = x` overwrites both for everything below the layer. So
unfreezing one layer of a frozen backbone by flipping the backbone's flag would
also unfreeze its BatchNormalization layers, and flipping only the layer's flag
would leave the backbone saying it is frozen. kft computes the wanted state of
every variable, then sets each layer's flag to "something below me trains"
(top-down, so a parent's cascade is corrected by its children) and finally each
variable's flag.

BatchNormalization policy: a BatchNormalization layer is frozen and unfrozen
as a whole (weights and statistics together; selecting its `beta` with
`"biases"` selects the layer). A frozen one runs in inference mode and keeps
its moving mean and variance. `unfreeze` leaves frozen
BatchNormalization layers frozen unless `train_bn=True` or the selection holds
nothing but normalization layers (`"norms"`, `"type:BatchNormalization"`).
`freeze(..., train_bn=True)` leaves them as they are (fastai's `train_bn`).
"""

import dataclasses

import keras

from kft.model_tree import count_params
from kft.model_tree import is_batch_norm
from kft.model_tree import layer_tree
from kft.model_tree import reset_compiled_functions
from kft.select import Norms
from kft.select import resolve


@dataclasses.dataclass
class FreezeResult:
    """What a `freeze`/`unfreeze` call did.

    Attributes:
        selected_layers: number of weighted layers the selection covered.
        changed_variables: number of variables whose trainable state changed.
        trainable_params: trainable scalars in the model afterwards.
        total_params: potentially trainable scalars in the model.
        kept_frozen: paths of BatchNormalization layers left frozen by the
            BatchNormalization policy.
    """

    selected_layers: int
    changed_variables: int
    trainable_params: int
    total_params: int
    kept_frozen: list

    def __str__(self):
        text = (
            f"{self.changed_variables} variables in {self.selected_layers} layers changed; "
            f"trainable parameters: {self.trainable_params:,} of {self.total_params:,}"
        )
        if self.kept_frozen:
            text += (
                f"; {len(self.kept_frozen)} BatchNormalization layers stay frozen "
                "(pass train_bn=True to train them)"
            )
        return text


def freeze(target, select="all", train_bn=False):
    """Freezes the selected part of `target`.

    Args:
        target: a Keras model (or layer). Pass the top model so that paths
            start there and a compiled model's train function is refreshed.
        select: what to freeze, in kft's selection language (see
            `kft.select`): a string spec (`"all"`, `"head"`, `"biases"`,
            `"norms"`, `"adapters"`, `"top:N"`, `"groups:N"`,
            `"type:LayerClass"`, a layer-name pattern such as `"conv5_.*"`
            or `"low|bn|mid"`, comma-joined for a union), a selector, or a
            callable `(path, layer) -> bool`.
        train_bn: leave selected BatchNormalization layers as they are
            (fastai keeps them training while the rest is frozen).

    Returns:
        A `FreezeResult`.

    Raises:
        KftError: the selection matches nothing (the message lists
            candidates) or is malformed.

    Example:
    ```python
    kft.freeze(model, "all")
    kft.unfreeze(model, "head")
    ```
    """
    return _set_trainable(target, select, False, train_bn)


def unfreeze(target, select="all", train_bn=False):
    """Unfreezes the selected part of `target`, and only that.

    Enclosing layers are marked trainable as needed while their other
    children keep their state. Frozen BatchNormalization layers stay frozen
    (inference mode, moving statistics untouched) unless `train_bn=True` or
    the selection is only normalization layers.

    If `target` is a compiled model, its train function is rebuilt so the
    next step trains the new set of variables (Keras alone would keep
    training the old set). The optimizer must have slots for them: build it
    with `kft.prepare_optimizer` before the first fit, or compile again;
    otherwise `fit` stops with Keras' "Unknown variable" error.

    Args:
        target: a Keras model (or layer).
        select: what to unfreeze, as for `freeze`.
        train_bn: also unfreeze selected BatchNormalization layers.

    Returns:
        A `FreezeResult`.

    Raises:
        KftError: the selection matches nothing or is malformed.

    Example:
    ```python
    kft.unfreeze(model, "groups:2")        # head and the last backbone stage
    kft.unfreeze(model, "biases")          # BitFit
    ```
    """
    return _set_trainable(target, select, True, train_bn)


def _set_trainable(target, select, value, train_bn):
    root = layer_tree(target)
    selection = resolve(select, root)
    nodes = list(root.walk())
    all_variables = [v for n in nodes for v in n.own_variables]
    before = _effective_state(nodes)
    wanted = dict(before)
    bn_flags = {id(n): n.is_effectively_trainable() for n in nodes if is_batch_norm(n.layer)}

    selected_units = [
        n for n in selection.nodes.values() if n.own_variables or is_batch_norm(n.layer)
    ]
    norms_only = bool(selected_units) and all(Norms().matches(n) for n in selected_units)
    kept_frozen, batch_norm_variables = [], set()
    for node in selected_units:
        if not is_batch_norm(node.layer):
            continue
        batch_norm_variables.update(id(v) for v in node.own_variables)
        if value and not (train_bn or norms_only):
            if not bn_flags[id(node)]:
                kept_frozen.append(node.path)
            continue
        if not value and train_bn:
            continue
        bn_flags[id(node)] = value
        for variable in node.own_variables:
            wanted[id(variable)] = value
    for key in selection.variables:
        if key not in batch_norm_variables:
            wanted[key] = value

    _apply(root, wanted, bn_flags)
    changed = [v for v in all_variables if wanted[id(v)] != before[id(v)]]
    if isinstance(target, keras.Model):
        # A traced train function keeps the variable list it was traced with:
        # without a new one, `fit` would silently train the old set.
        reset_compiled_functions(target, forward_changed=False)
    return FreezeResult(
        selected_layers=len([n for n in selected_units if n.own_variables]),
        changed_variables=len(changed),
        trainable_params=count_params([v for v in all_variables if wanted[id(v)]]),
        total_params=count_params(all_variables),
        kept_frozen=kept_frozen,
    )


def _effective_state(nodes):
    return {
        id(v): v.trainable and node.is_effectively_trainable()
        for node in nodes
        for v in node.own_variables
    }


def _apply(root, wanted, bn_flags):
    want = {}

    def compute(node):
        child_values = [compute(child) for child in node.children]
        if is_batch_norm(node.layer):
            value = bn_flags[id(node)]
        else:
            known = [wanted[id(v)] for v in node.own_variables]
            known += [c for c in child_values if c is not None]
            # Layers with nothing trainable below them follow their parent.
            value = any(known) if known else None
        want[id(node)] = value
        return value

    def set_flags(node, inherited):
        value = inherited if want[id(node)] is None else want[id(node)]
        node.layer.trainable = value  # cascades; children below correct it.
        for child in node.children:
            set_flags(child, value)

    compute(root)
    set_flags(root, root.layer.trainable)
    for node in root.walk():
        for variable in node.own_variables:
            variable.trainable = wanted[id(variable)]

