"""The layer tree of a Keras model: every layer with its path, in order.

Keras 3 keeps two trainable switches: a flag on each layer and a flag on each
variable. `layer.trainable = x` sets both for the layer and, recursively, for
everything below it; `model.trainable_variables` then lists the variables whose
own flag is set (provided the model's flag is set). Freezing part of a nested
model therefore means setting flags node by node, which needs the tree.
"""

import dataclasses

import keras


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

    def variables(self):
        """The potentially trainable variables of this node and below."""
        return [v for node in self.walk() for v in node.own_variables]

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


def is_batch_norm(layer):
    return isinstance(layer, keras.layers.BatchNormalization)


def count_params(variables):
    total = 0
    for variable in variables:
        size = 1
        for dim in variable.shape:
            size *= int(dim)
        total += size
    return total
