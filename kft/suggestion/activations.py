"""Each layer group's output, pooled to one vector per example."""

import keras
import numpy as np

from kft.errors import KftError
from kft.freezing.groups import layer_groups


def group_feature_model(model, groups=None):
    """A model from `model`'s inputs to the pooled output of every group below the head.

    A group's output is the output of its last layer (a nested block, such
    as a transformer layer, counts as one layer), averaged over every axis
    between the batch and the channels (an image's height and width), so
    each group gives `[batch, channels]`.

    Args:
        model: a functional Keras model, typically a kft classifier with a
            nested functional backbone.
        groups: its `kft.layer_groups` (computed when `None`).

    Returns:
        `(feature_model, names)`: a `keras.Model` with one output per group
        below the head, and those groups' names.

    Example:
    ```python
    features, names = group_feature_model(model)
    pooled = features.predict(images)  # one [N, C] array per name
    ```
    """
    groups = [g for g in (groups or layer_groups(model)) if g.name != "head"]
    if not groups:
        raise KftError(f"model {model.name!r} has no layer groups below its head.")
    ends = [_graph_child(group._nodes[-1]) for group in groups]
    owners = {id(node.parent.layer): node.parent.layer for node in ends}
    if len(owners) != 1:
        raise KftError(f"The layer groups of model {model.name!r} do not end in one "
                       "functional model, so their outputs cannot be read.")
    (owner,) = owners.values()
    outputs = [_pooled(node.layer.output) for node in ends]
    if owner is model:
        return keras.Model(model.inputs, outputs), [g.name for g in groups]
    inner = keras.Model(owner.inputs, outputs)
    inputs = _inputs_in(model, owner)
    return keras.Model(model.inputs, inner(inputs)), [g.name for g in groups]


def pooled_features(feature_model, images, batch_size=32):
    """Runs `feature_model` over `images`; a list of float64 `[N, C]` arrays."""
    found = feature_model.predict(images, batch_size=batch_size, verbose=0)
    found = found if isinstance(found, (list, tuple)) else [found]
    return [np.asarray(f, np.float64) for f in found]


def _graph_child(node):
    """`node` or its ancestor that is a layer of a functional model's graph."""
    child = node
    while child.parent is not None and not _is_functional(child.parent.layer):
        child = child.parent
    if child.parent is None:
        raise KftError(f"Layer {node.path} is not inside a functional model; kft reads "
                       "group outputs from functional backbones only.")
    return child


def _is_functional(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


def _pooled(tensor):
    if len(tensor.shape) > 2:
        tensor = keras.ops.mean(tensor, axis=tuple(range(1, len(tensor.shape) - 1)))
    return tensor


def _inputs_in(model, owner):
    """The tensors `owner` is called on inside `model`'s graph."""
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is owner:
                tensors = node.input_tensors
                return tensors[0] if len(tensors) == 1 else tensors
    raise KftError(f"{owner.name!r} is not called in the graph of model {model.name!r}.")
