"""Layer groups: a model split into ordered blocks from input to output.

Gradual unfreezing and per-group learning rates work on groups, not on single
layers. kft knows the stage structure of the common keras.applications and
keras-hub architectures, puts the kft head (`head_*` layers) last, and splits
anything else evenly by depth.
"""

import dataclasses
import re

import keras

from kft.model_tree import count_params
from kft.model_tree import head_layers
from kft.model_tree import is_norm_layer
from kft.model_tree import layer_tree
from kft.model_tree import own_weights
from kft.model_tree import units

@dataclasses.dataclass(eq=False)
class LayerGroup:
    """A contiguous block of a model's layers.

    Attributes:
        name: the group's name, e.g. `"conv4"`, `"block6"`,
            `"transformer_layer_3"` or `"head"`.
        layers: the group's leaf layers (and any layer owning weights
            directly), input to output.
        paths: the layers' paths from the model, e.g.
            `"backbone/conv4_block1_1_conv"`.
        variables: every variable of those layers, trainable or not.
    """

    name: str
    layers: list
    paths: list
    variables: list
    _nodes: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def num_params(self):
        """Number of scalars in all of the group's variables."""
        return count_params(self.variables)

    @property
    def num_trainable_params(self):
        """Number of scalars the optimizer would update now."""
        return count_params(self.trainable_variables)

    @property
    def trainable_variables(self):
        """The group's variables that `model.fit` would train now."""
        return [
            v
            for node in self._nodes
            if node.is_effectively_trainable()
            for v in node.own_variables
            if v.trainable
        ]

    def __repr__(self):
        return (
            f"LayerGroup({self.name!r}, layers={len(self.layers)}, "
            f"params={self.num_params:,}, trainable={self.num_trainable_params:,})"
        )


def layer_groups(model, fallback_groups=4):
    """Splits `model` into ordered layer groups, input to output.

    Known structures:
    - keras.applications ResNet (v1, v2): `conv1`, `conv2` ... `conv5`.
    - EfficientNet (keras.applications v1 and v2, keras-hub, Lite):
      `stem`, `block1` ... `block7`, `top`.
    - MobileNetV2 / V3: `stem`, `stage1` ... (consecutive inverted-residual
      blocks with the same width), `top`.
    - VGG16 / VGG19: `block1` ... `block5`.
    - ConvNeXt: `stem`, `stage_0` ... `stage_3` (a stage's downsampling
      layer belongs to it).
    - keras-hub transformer backbones: `embeddings`, one group per transformer
      layer (named like the layer), `pooler` (what follows the last one).
    Anything else is split into `fallback_groups` groups (`group_1`, ...) of
    equally many weighted layers (a normalization layer
    stays in the group of the layer before it). The head (see `head_layers`: the
    top-level `head_*` layers, or a keras-hub task's layers above its backbone)
    is always the last group, `head`. Layers without weights that come before
    the first group (input, augmentation, preprocessing) belong to it; other
    layers without a group of their own belong to the group before them.

    Args:
        model: a Keras model, typically a kft task model with a nested
            `backbone`; a bare backbone works too.
        fallback_groups: number of groups for unknown architectures.

    Returns:
        A list of `LayerGroup`, input to output.

    Example:
    ```python
    for group in kft.layer_groups(model):
        print(group.name, group.num_params, group.num_trainable_params)
    ```
    """
    root = layer_tree(model)
    all_units = units(root)
    head_ids = {id(layer) for layer in head_layers(model)}
    head = [n for n in all_units if id(n.top_level().layer) in head_ids]
    body = [n for n in all_units if id(n.top_level().layer) not in head_ids]

    backbone, rule = _find_architecture(root)
    if rule is not None:
        names = _names_from_rule(body, backbone, rule)
    else:
        names = _even_split(body, fallback_groups)
    names = _fill_gaps(names, [_is_input(n.layer) for n in body])

    groups, by_name = [], {}
    for node, name in zip(body, names):
        if name not in by_name:
            by_name[name] = LayerGroup(name, [], [], [])
            groups.append(by_name[name])
        _add(by_name[name], node)
    if head:
        head_group = LayerGroup("head", [], [], [])
        for node in head:
            _add(head_group, node)
        groups.append(head_group)
    return groups


def _is_input(layer):
    return isinstance(layer, keras.layers.InputLayer)


def _add(group, node):
    group.layers.append(node.layer)
    group.paths.append(node.path)
    group._nodes.append(node)
    own = node.layer.weights if node.is_leaf else own_weights(node.layer)
    group.variables.extend(own)


def _find_architecture(root):
    """The first model in the tree, breadth first, whose structure kft knows."""
    queue = [root]
    while queue:
        node = queue.pop(0)
        if node.children:
            for rule in _RULES:
                if rule.matches(node):
                    return node, rule
        queue.extend(node.children)
    return None, None


def _names_from_rule(body, backbone, rule):
    # Layers nested deeper than the backbone's children (transformer blocks,
    # ConvNeXt's Sequential stem) take the group of that child.
    child_names = dict(zip(map(id, backbone.children), rule.assign(backbone.children)))
    names = []
    for node in body:
        child = node
        while child.parent is not None and child.parent is not backbone:
            child = child.parent
        names.append(child_names.get(id(child)) if child.parent is backbone else None)
    return names


def _even_split(body, num_groups):
    # Normalization layers stay with the layer they normalize (they get no
    # name here and join the group before them), so a group boundary never
    # separates a convolution from its BatchNorm.
    weighted = [i for i, n in enumerate(body)
                if n.own_variables and not is_norm_layer(n.layer)]
    num_groups = max(1, min(num_groups, len(weighted)))
    names = [None] * len(body)
    for rank, index in enumerate(weighted):
        names[index] = f"group_{rank * num_groups // len(weighted) + 1}"
    return names


def _fill_gaps(names, is_input):
    """Layers without a group join the one before them; inputs the one after."""
    filled, current = list(names), None
    for i in reversed(range(len(filled))):
        if filled[i] is not None:
            current = filled[i]
        elif is_input[i]:
            filled[i] = current
    current = next((n for n in filled if n is not None), "group_1")
    for i, name in enumerate(filled):
        current = name if name is not None else current
        filled[i] = current
    return filled


class _NameRule:
    """Groups a backbone's children by regexes over their names."""

    def __init__(self, required, patterns):
        self.required = [re.compile(p) for p in required]
        self.patterns = [(re.compile(p), name) for p, name in patterns]

    def matches(self, node):
        names = [c.name for c in node.children]
        return all(any(r.search(n) for n in names) for r in self.required)

    def assign(self, children):
        return [self._group(child.name) for child in children]

    def _group(self, name):
        for pattern, group in self.patterns:
            match = pattern.search(name)
            if match:
                return group(match) if callable(group) else group
        return None


class _MobileNetRule:
    """MobileNetV2/V3: a stage is a run of blocks with the same output width."""

    _block = re.compile(r"^(?:expanded_conv|block)(?:_(\d+))?_")

    def __init__(self, stem, top):
        self.stem = re.compile(stem)
        self.top = re.compile(top)

    def matches(self, node):
        names = [c.name for c in node.children]
        return (
            any(self.stem.search(n) for n in names)
            and any(self.top.search(n) for n in names)
            and any(n.startswith("expanded_conv_") for n in names)
        )

    def assign(self, children):
        widths = {}
        for child in children:
            match = self._block.match(child.name)
            if match and child.name.endswith("_project"):
                widths[int(match.group(1) or 0)] = child.layer.filters
        stage_of, stage, previous = {}, 0, None
        for block in sorted(widths):
            if widths[block] != previous:
                stage, previous = stage + 1, widths[block]
            stage_of[block] = stage
        names = []
        for child in children:
            match = self._block.match(child.name)
            if self.stem.search(child.name):
                names.append("stem")
            elif self.top.search(child.name):
                names.append("top")
            elif match and int(match.group(1) or 0) in stage_of:
                names.append(f"stage{stage_of[int(match.group(1) or 0)]}")
            else:
                names.append(None)
        return names


class _TransformerRule:
    """keras-hub backbones that keep their blocks in `transformer_layers`."""

    def matches(self, node):
        blocks = getattr(node.layer, "transformer_layers", None)
        children = {id(c.layer) for c in node.children}
        return bool(blocks) and all(id(b) in children for b in blocks)

    def assign(self, children):
        blocks = {id(b) for b in children[0].parent.layer.transformer_layers}
        names, seen_block = [], False
        for child in children:
            if id(child.layer) in blocks:
                seen_block = True
                names.append(child.name)
            elif not seen_block:
                names.append("embeddings" if child.own_variables or child.children else None)
            else:
                names.append("pooler" if child.variables() else None)
        return names


_RULES = [
    _TransformerRule(),
    _NameRule(
        required=[r"^conv1_", r"^conv5_block\d+_"],
        patterns=[(r"^(conv[1-5])_", lambda m: m.group(1))],
    ),
    _NameRule(
        required=[r"^stem_conv", r"^block1[a-z]_"],
        patterns=[
            (r"^stem_", "stem"),
            (r"^block(\d+)[a-z]_", lambda m: f"block{m.group(1)}"),
            (r"^top_", "top"),
        ],
    ),
    _NameRule(
        required=[r"^block1_conv1$", r"^block5_conv"],
        patterns=[(r"^block(\d+)_", lambda m: f"block{m.group(1)}")],
    ),
    _NameRule(
        required=[r"_stage_0_block_0_"],
        patterns=[
            (r"_stem$", "stem"),
            (r"_stage_(\d+)_", lambda m: f"stage_{m.group(1)}"),
            (r"_downsampling_block_(\d+)$", lambda m: f"stage_{int(m.group(1)) + 1}"),
        ],
    ),
    _MobileNetRule(
        stem=r"^(Conv1|bn_Conv1|conv|conv_bn)$",
        top=r"^(Conv_1|Conv_1_bn|conv_\d+|conv_\d+_bn|logits)$",
    ),
]
