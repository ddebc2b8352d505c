"""Each layer group's output, pooled to one vector per example."""

import keras
import numpy as np

from kft.errors import KftError
from kft.freezing.groups import layer_groups


def group_feature_model(model, groups=None):
    """A model from `model`'s inputs to the pooled output of every group below the head.

    A group's output is the output of its last layer (a nested block, such
    as a transformer layer, counts as one layer), averaged over every axis
    between the batch and the channels (an image's height and width; a
    sequence's tokens, weighted by the graph's `padding_mask` input where it
    has one, so padding does not count), so each group gives
    `[batch, channels]`.

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
    # The backbone is the graph the first group ends in. A group's end is its
    # last layer in that graph: layers without a group of their own join the
    # one before them, such as a keras-hub task's preprocessor after the pooler.
    owner = _graph_child(groups[0]._nodes[-1]).parent.layer
    ends = []
    for group in groups:
        inside = [child for child in map(_graph_child, group._nodes)
                  if child.parent.layer is owner]
        if not inside:
            raise KftError(f"Layer group {group.name!r} of model {model.name!r} has no layer "
                           f"in {owner.name!r}, so its output cannot be read.")
        ends.append(inside[-1])
    mask = _padding_mask(owner)
    outputs = [_pooled(node.layer.output, mask) for node in ends]
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
        raise KftError(f"Layer {node.path or node.name} is not inside a functional model; kft "
                       "reads group outputs from functional backbones only.")
    return child


def _is_functional(layer):
    return isinstance(layer, keras.Model) and hasattr(layer, "_nodes_by_depth")


def _pooled(tensor, mask=None):
    if isinstance(tensor, dict):
        # keras-hub backbones end in a dict; the sequence is what the blocks see.
        tensor = tensor["sequence_output"]
    if len(tensor.shape) == 3 and mask is not None:
        weights = keras.ops.expand_dims(keras.ops.cast(mask, tensor.dtype), -1)
        return keras.ops.sum(tensor * weights, axis=1) / keras.ops.maximum(
            keras.ops.sum(weights, axis=1), 1.0)
    if len(tensor.shape) > 2:
        tensor = keras.ops.mean(tensor, axis=tuple(range(1, len(tensor.shape) - 1)))
    return tensor


def _padding_mask(graph):
    inputs = graph.input
    return inputs.get("padding_mask") if isinstance(inputs, dict) else None


def _inputs_in(model, owner):
    """The tensors `owner` is called on inside `model`'s graph."""
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is owner:
                # As called: a dict of inputs (keras-hub) stays a dict.
                arguments = node.arguments.args
                return arguments[0] if len(arguments) == 1 else list(arguments)
    raise KftError(f"{owner.name!r} is not called in the graph of model {model.name!r}.")
