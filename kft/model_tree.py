"""The layer tree of a Keras model: every layer with its path, in order.

One walker for all of kft: freezing, layer groups, LoRA targets, adapter
files, learning-rate multipliers and error messages all see the same layers
under the same paths. A path such as
`bert_backbone/transformer_layer_0/self_attention_layer/query` is the
`/`-joined layer names from the top model; it names a layer wherever it
sits: in a functional graph, a nested model, or inside a keras-hub block.

Keras 3 keeps two trainable switches: a flag on each layer and a flag on each
variable. `layer.trainable = x` sets both for the layer and, recursively, for
everything below it; `model.trainable_variables` then lists the variables whose
own flag is set (provided the model's flag is set). Freezing part of a nested
model therefore means setting flags node by node, which needs the tree.

The module also holds what kft decides about single layers and variables
(is it a normalization layer, a bias, which weights does it own), how it
counts parameters and how it drops traced functions after a model changed.
"""

import dataclasses

import keras
import numpy as np

_LISTED = 40  # paths shown in an error message

# kft's task models name their head layers so (`head_pool`, `head_dense`).
HEAD_PREFIX = "head_"


@dataclasses.dataclass(eq=False)
class LayerNode:
    """One layer in a model's tree.

    Attributes:
        path: `/`-joined layer names from the root, e.g.
            `"backbone/conv5_block3_out"`; `""` for the root itself.
        layer: the Keras layer.
        parent: the enclosing node, `None` for the root.
        children: the direct sublayers, in call order where Keras knows it.
        own_variables: the variables this layer created as trainable
            (whether or not they are trainable now), not its sublayers'.
    """

    path: str
    layer: keras.layers.Layer
    parent: "LayerNode | None"
    children: list = dataclasses.field(default_factory=list)
    own_variables: list = dataclasses.field(default_factory=list)

    @property
    def name(self):
        return self.layer.name

    @property
    def is_leaf(self):
        return not self.children

    @property
    def is_unit(self):
        """Whether the node is a unit of freezing: a leaf or a weight owner."""
        return self.is_leaf or bool(self.own_variables)

    def walk(self):
        """Yields this node and every node below it, depth first, in order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def ancestors(self):
        """Yields the enclosing nodes, nearest first, up to the root."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def top_level(self):
        """The ancestor (or this node) that is a direct child of the root."""
        node = self
        while node.parent is not None and node.parent.parent is not None:
            node = node.parent
        return node

    def variables(self):
        """The potentially trainable variables of this node and below."""
        return [v for node in self.walk() for v in node.own_variables]

    def variable_path(self, variable):
        """`<layer path>/<variable name>`, the path selections match variables by."""
        return f"{self.path}/{variable.name}" if self.path else variable.name

    def is_effectively_trainable(self):
        """Whether the layer and every enclosing layer have their flag set."""
        return self.layer.trainable and all(a.layer.trainable for a in self.ancestors())


def layer_tree(model):
    """Builds the tree of `model`'s layers.

    A layer reused in several places (a tied embedding, say) appears once, at
    its first position.

    Args:
        model: a Keras model or layer.

    Returns:
        The root `LayerNode`.
    """
    seen_layers, seen_variables = set(), set()

    def build(layer, path, parent):
        seen_layers.add(id(layer))
        node = LayerNode(path=path, layer=layer, parent=parent)
        # A LoRA layer's base kernel stays frozen whatever is unfrozen: the
        # adapters are what trains (merge them to change the base). Its bias
        # may train, as with PEFT's bias="all" and BitFit.
        base = getattr(layer, "base_variables", None)
        base = base() if callable(base) else ()
        seen_variables.update(id(v) for v in base if v.name != "bias")
        for variable in getattr(layer, "_trainable_variables", []):
            if id(variable) not in seen_variables:
                seen_variables.add(id(variable))
                node.own_variables.append(variable)
        for child in sublayers(layer):
            if id(child) not in seen_layers:
                child_path = f"{path}/{child.name}" if path else child.name
                node.children.append(build(child, child_path, node))
        return node

    return build(model, "", None)


def sublayers(layer):
    """The direct sublayers of `layer`, in graph order for functional models."""
    tracked = list(layer._flatten_layers(include_self=False, recursive=False))
    if not isinstance(layer, keras.Model):
        return tracked
    # A functional model's `layers` follow the graph (inputs next to their
    # users); its tracker lists inputs last.
    ordered = list(layer.layers)
    known = {id(x) for x in ordered}
    return ordered + [x for x in tracked if id(x) not in known]


def units(root):
    """The freezing units below `root` (leaves and weight owners), in order."""
    return [node for node in root.walk() if node is not root and node.is_unit]


def layer_paths(model):
    """Every layer under `model` (input layers left out), by path, in tree order.

    Args:
        model: a Keras model or layer.

    Returns:
        A dict `{path: layer}`.
    """
    return {
        node.path: node.layer
        for node in layer_tree(model).walk()
        if node.parent is not None and not isinstance(node.layer, keras.layers.InputLayer)
    }


def describe_paths(paths):
    """A newline-separated listing of `{path: layer}` (truncated) for error messages."""
    listed = [f"{p} ({type(layer).__name__})" for p, layer in paths.items()]
    if len(listed) > _LISTED:
        listed = listed[:_LISTED] + [f"... and {len(listed) - _LISTED} more"]
    return "\n  ".join(listed) if listed else "(none)"


# ------------------------------------------------------------ heads, tasks


def head_layers(model):
    """The top-level layers that form `model`'s head, input to output.

    The head is the top-level layers named `head_*` (kft's task models), or,
    for a keras-hub task without such layers (`BertTextClassifier`, ...),
    every top-level layer besides its `backbone` and `preprocessor` (keras-hub
    names them `logits`, `classifier_dropout`, ...). Anything else has no head.

    Args:
        model: a Keras model.

    Returns:
        A list of layers, possibly empty.
    """
    layers = [
        layer for layer in getattr(model, "layers", [])
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    named = [layer for layer in layers if layer.name.startswith(HEAD_PREFIX)]
    if named or not is_keras_hub_task(model):
        return named
    body = {id(getattr(model, "backbone", None)), id(getattr(model, "preprocessor", None))}
    return [layer for layer in layers if id(layer) not in body]


def is_keras_hub_task(model):
    """Whether `model` is a keras-hub `Task` (tested without importing keras-hub)."""
    return any(
        cls.__name__ == "Task" and cls.__module__.startswith("keras_hub.")
        for cls in type(model).__mro__
    )


# ------------------------------------------------------- layers and variables


def own_weights(layer):
    """The variables `layer` created itself (trainable or not), not its sublayers'."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def is_batch_norm(layer):
    """BatchNormalization: the one normalization with moving statistics."""
    return isinstance(layer, keras.layers.BatchNormalization)


_NORM_TYPES = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.RMSNormalization,
    keras.layers.UnitNormalization,
)


def is_norm_layer(layer):
    """Normalization layers: BatchNorm, LayerNorm, GroupNorm, RMSNorm and
    look-alikes of other libraries (a class name holding "Norm").

    `keras.layers.Normalization` is input standardisation, not a norm layer.
    """
    if isinstance(layer, keras.layers.Normalization):
        return False
    return isinstance(layer, _NORM_TYPES) or "Norm" in type(layer).__name__


def is_bias_variable(variable):
    """Biases, BitFit's sense: `bias` of any layer, `beta` of norms, `*_bias`."""
    name = variable.name.split("/")[-1]
    return name in ("bias", "beta") or name.endswith("_bias")


def is_norm_variable_path(path):
    """Whether a variable path (no layer at hand) looks like a norm layer's
    parameter: `gamma`/`beta`, or `scale` of a layer whose name holds "norm".

    Only for variables whose layer is unknown (an optimizer built without its
    model); with a model, `is_norm_layer` decides by the layer's type.
    """
    segments = path.split("/")
    if segments[-1] in ("gamma", "beta"):
        return True
    return segments[-1] == "scale" and len(segments) > 1 and "norm" in segments[-2].lower()


# ----------------------------------------------------------------- counting


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """Trainable and total parameters of a model.

    Attributes:
        trainable: parameters the optimizer updates.
        total: all weights (base, adapters, head, BatchNorm statistics).
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


def count_params(variables):
    """Number of scalars in `variables`."""
    return int(sum(int(np.prod(variable.shape)) for variable in variables))


def count_parameters(model):
    """Counts `model`'s trainable and total parameters.

    Args:
        model: a Keras model.

    Returns:
        A `ParameterCount`.
    """
    return ParameterCount(count_params(model.trainable_weights), count_params(model.weights))


# ------------------------------------------------------- compiled functions


def reset_compiled_functions(model, forward_changed=True):
    """Makes `model` trace its functions again after what it computes or
    trains changed.

    Traced functions keep the graph and the variable list they were traced
    with. The top model's train function is re-made at once (so a callback
    can change what trains in the middle of `fit`, whose loop calls it each
    step); when the forward pass changed too (LoRA merged or switched, an
    embedding grown), every other traced function of the model and of the
    models inside it is dropped and traced again on use.

    Args:
        model: a Keras model.
        forward_changed: `False` when only what trains changed (freezing):
            evaluation and prediction stay as traced.
    """
    if getattr(model, "train_function", None) is not None:
        model.make_train_function(force=True)
    if not forward_changed:
        return
    for layer in [model] + list(model._flatten_layers(include_self=False)):
        if isinstance(layer, keras.Model):
            if layer is not model:
                layer.train_function = None
            layer.test_function = None
            layer.predict_function = None
            if hasattr(layer, "generate_function"):
                # keras-hub's CausalLM / Seq2SeqLM: its traced generation
                # loop would still add an adapter that was just merged.
                layer.generate_function = None
