"""Selectors: which layers or variables of a model a freeze/unfreeze touches.

A selection is built from small selector objects (`Name`, `Type`, `TopLayers`,
`LastGroups`, `Biases`, `Norms`, `Head`, `All`, `Where`) combined with `|`
(union), `&` (intersection) and `-` (difference), from a callable
`(path, layer) -> bool`, or from a string spec that recipe files and `--set`
use: `"all"`, `"head"`, `"biases"`, `"norms"`, `"adapters"`, `"top:30"`, `"groups:2"`,
`"name:REGEX"`, `"type:BatchNormalization"`, several joined by commas (union).

Selecting a layer selects everything below it: `Name("backbone")` is the whole
backbone.
"""

import dataclasses
import difflib
import re

import keras

from kft.errors import KftError
from kft.freezing.groups import HEAD_PREFIX
from kft.freezing.groups import head_layers
from kft.freezing.groups import layer_groups
from kft.model_tree import units

SPEC_FORMS = (
    '"all", "head", "biases", "norms", "adapters", "top:N", "groups:N", "name:REGEX", '
    '"type:LayerClass", or several of these joined by commas'
)

_NORM_TYPES = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.RMSNormalization,
)


@dataclasses.dataclass
class Selection:
    """What a selector picked: variables and layers, each keyed by `id`.

    Attributes:
        variables: potentially trainable variables, `{id: variable}`.
        nodes: the layer-tree nodes covered, `{id: LayerNode}`.
    """

    variables: dict
    nodes: dict

    def __or__(self, other):
        return Selection({**self.variables, **other.variables}, {**self.nodes, **other.nodes})

    def __and__(self, other):
        return Selection(
            {k: v for k, v in self.variables.items() if k in other.variables},
            {k: v for k, v in self.nodes.items() if k in other.nodes},
        )

    def __sub__(self, other):
        return Selection(
            {k: v for k, v in self.variables.items() if k not in other.variables},
            {k: v for k, v in self.nodes.items() if k not in other.nodes},
        )

    def __bool__(self):
        return bool(self.variables) or bool(self.nodes)


class Selector:
    """Base class: picks part of a layer tree.

    Subclasses implement `matches(node)` (a layer and everything below it is
    selected when it matches) or override `resolve`.
    """

    def matches(self, node):
        raise NotImplementedError

    def resolve(self, root):
        """Returns the `Selection` this selector makes in the tree at `root`."""
        picked = [n for n in root.walk() if n is not root and self.matches(n)]
        return _covering(picked)

    def atoms(self):
        """The plain selectors this one is made of (itself if plain)."""
        return [self]

    def hint(self, root):
        """Says what the model has instead, for the nothing-matched error."""
        return _top_level_hint(root)

    def __or__(self, other):
        return _Combined(self, as_selector(other), "|")

    def __and__(self, other):
        return _Combined(self, as_selector(other), "&")

    def __sub__(self, other):
        return _Combined(self, as_selector(other), "-")


class All(Selector):
    """Every layer."""

    def resolve(self, root):
        return _covering([root])

    def __repr__(self):
        return '"all"'


class Head(Selector):
    """The head: top-level `head_*` layers, or a keras-hub task's layers above
    its backbone (see `kft.freezing.groups.head_layers`)."""

    def matches(self, node):
        if node.parent is None or node.parent.parent is not None:
            return False
        return any(node.layer is layer for layer in head_layers(node.parent.layer))

    def hint(self, root):
        return (
            f"The head is the top-level layers named {HEAD_PREFIX}*; "
            + _top_level_hint(root)
        )

    def __repr__(self):
        return '"head"'


class Name(Selector):
    """Layers whose path matches a regex (`re.search`), e.g. `"conv5_"`."""

    def __init__(self, pattern):
        try:
            self.regex = re.compile(pattern)
        except re.error as error:
            raise KftError(f"name:{pattern} is not a valid regular expression: {error}.")
        self.pattern = pattern

    def matches(self, node):
        return bool(self.regex.search(node.path))

    def hint(self, root):
        nodes = [n for n in root.walk() if n is not root]
        names = difflib.get_close_matches(self.pattern, sorted({n.name for n in nodes}), n=8)
        shown = ", ".join(n.path for n in nodes if n.name in names)[:600] or "none"
        return f"Closest layer paths: {shown}. " + _top_level_hint(root)

    def __repr__(self):
        return f'"name:{self.pattern}"'


class Type(Selector):
    """Layers of a class, given as the class or its name (subclasses match)."""

    def __init__(self, layer_type):
        self.type_name = layer_type if isinstance(layer_type, str) else layer_type.__name__

    def matches(self, node):
        return any(cls.__name__ == self.type_name for cls in type(node.layer).__mro__)

    def hint(self, root):
        return _types_hint(root)

    def __repr__(self):
        return f'"type:{self.type_name}"'


class Norms(Selector):
    """Normalization layers (BatchNorm, LayerNorm, GroupNorm, RMSNorm, ...)."""

    def matches(self, node):
        layer = node.layer
        if not node.is_leaf or isinstance(layer, keras.layers.Normalization):
            return False  # keras.layers.Normalization is input standardisation.
        return isinstance(layer, _NORM_TYPES) or "Norm" in type(layer).__name__

    def hint(self, root):
        return _types_hint(root)

    def __repr__(self):
        return '"norms"'


class TopLayers(Selector):
    """The last `n` layers that own weights, counted from the output."""

    def __init__(self, n):
        self.n = _positive(n, "top")

    def resolve(self, root):
        weighted = [n for n in units(root) if n.own_variables]
        return _covering(weighted[-self.n :])

    def hint(self, root):
        return "The model has no layers with trainable weights."

    def __repr__(self):
        return f'"top:{self.n}"'


class LastGroups(Selector):
    """The last `n` layer groups (see `kft.layer_groups`)."""

    def __init__(self, n):
        self.n = _positive(n, "groups")

    def resolve(self, root):
        groups = layer_groups(root.layer)[-self.n :]
        paths = {p for g in groups for p in g.paths}
        return _covering([n for n in root.walk() if n.path in paths and n is not root])

    def __repr__(self):
        return f'"groups:{self.n}"'


class Biases(Selector):
    """Bias variables only, BitFit style: `bias` of any layer, `beta` of norms."""

    def resolve(self, root):
        variables, nodes = {}, {}
        for node in root.walk():
            for variable in node.own_variables:
                if _is_bias(variable):
                    variables[id(variable)] = variable
                    nodes[id(node)] = node
        return Selection(variables, nodes)

    def hint(self, root):
        return "No layer in this model has a variable named 'bias' or 'beta'."

    def __repr__(self):
        return '"biases"'


class Adapters(Selector):
    """The PEFT parameters: the active adapter of each LoRA layer (not its
    base kernel or bias), bottleneck adapters and soft prompts."""

    def resolve(self, root):
        from kft.layers.bottleneck_adapter import BottleneckAdapter
        from kft.layers.lora_adapters import LoRAAdapters
        from kft.layers.soft_prompt import SoftPrompt

        variables, nodes = {}, {}
        for node in root.walk():
            layer = node.layer
            if isinstance(layer, LoRAAdapters):
                if layer.merged_adapter is not None or layer.active_adapter is None:
                    continue  # A merged adapter is part of the kernel now.
                chosen = layer.adapter_variables(layer.active_adapter).values()
            elif isinstance(layer, (BottleneckAdapter, SoftPrompt)):
                chosen = [v for n in node.walk() for v in n.own_variables]
            else:
                continue
            for variable in chosen:
                variables[id(variable)] = variable
            nodes[id(node)] = node
        return Selection(variables, nodes)

    def hint(self, root):
        return (
            "The model has no PEFT layers; add them with kft.peft.apply_lora, "
            "apply_bottleneck_adapters or apply_prompt_tuning first."
        )

    def __repr__(self):
        return '"adapters"'


class Where(Selector):
    """Layers for which `predicate(path, layer)` is true."""

    def __init__(self, predicate):
        self.predicate = predicate

    def matches(self, node):
        return bool(self.predicate(node.path, node.layer))

    def __repr__(self):
        return f"Where({getattr(self.predicate, '__name__', 'function')})"


class _Combined(Selector):
    def __init__(self, left, right, op):
        self.left, self.right, self.op = left, right, op

    def resolve(self, root):
        left, right = self.left.resolve(root), self.right.resolve(root)
        return {"|": left | right, "&": left & right, "-": left - right}[self.op]

    def atoms(self):
        return self.left.atoms() + self.right.atoms()

    def __repr__(self):
        return f"({self.left!r} {self.op} {self.right!r})"


def as_selector(select):
    """Turns any accepted form of `select` into a `Selector`.

    Args:
        select: a `Selector`, a callable `(path, layer) -> bool`, a string
            spec (see the module docstring), or a list of these (union).

    Returns:
        A `Selector`.
    """
    if isinstance(select, Selector):
        return select
    if isinstance(select, str):
        return parse_selector(select)
    if isinstance(select, (list, tuple)) and select:
        return _union([as_selector(s) for s in select])
    if callable(select):
        return Where(select)
    raise KftError(
        f"select={select!r} is not a selection. Use a selector, a function "
        f"(path, layer) -> bool, or a string: {SPEC_FORMS}."
    )


# A comma starts a new part only before a known form, so regexes may hold commas.
_SPLIT = re.compile(r"\s*,\s*(?=(?:all|head|biases|norms|adapters)\s*(?:,|$)|(?:top|groups|name|type):)")


def parse_selector(spec):
    """Parses a string spec such as `"head,name:conv5_"` into a `Selector`.

    Args:
        spec: `"all"`, `"head"`, `"biases"`, `"norms"`, `"adapters"`, `"top:N"`,
            `"groups:N"`, `"name:REGEX"`, `"type:LayerClass"`, or several
            joined by commas (their union).

    Returns:
        A `Selector`.

    Example:
    ```python
    kft.unfreeze(model, "groups:2,norms")
    ```
    """
    parts = [p for p in _SPLIT.split(spec.strip()) if p]
    if not parts:
        raise KftError(f"select={spec!r} is empty. Use {SPEC_FORMS}.")
    return _union([_parse_part(p) for p in parts])


def _parse_part(part):
    simple = {"all": All, "head": Head, "biases": Biases, "norms": Norms, "adapters": Adapters}
    if part in simple:
        return simple[part]()
    kind, _, value = part.partition(":")
    if kind == "top":
        return TopLayers(value)
    if kind == "groups":
        return LastGroups(value)
    if kind == "name" and value:
        return Name(value)
    if kind == "type" and value:
        return Type(value)
    raise KftError(f"Unknown selection {part!r}. Use {SPEC_FORMS}.")


def resolve(select, root):
    """Resolves `select` in the tree at `root`; an empty part is an error.

    Args:
        select: anything `as_selector` accepts.
        root: the root `LayerNode`.

    Returns:
        The `Selection`.

    Raises:
        KftError: when the selection, or one of its plain parts, matches
            nothing; the message lists what the model has instead.
    """
    selector = as_selector(select)
    for atom in selector.atoms():
        if not atom.resolve(root):
            raise KftError(
                f"select={atom!r} matches nothing in model {root.layer.name!r}. "
                + atom.hint(root)
            )
    selection = selector.resolve(root)
    if not selection:
        raise KftError(
            f"select={selector!r} matches nothing in model {root.layer.name!r} "
            "(each part matches something, their combination does not). "
            + _top_level_hint(root)
        )
    return selection


def _union(selectors):
    combined = selectors[0]
    for selector in selectors[1:]:
        combined = combined | selector
    return combined


def _covering(picked):
    nodes, variables = {}, {}
    for top in picked:
        for node in top.walk():
            nodes[id(node)] = node
            for variable in node.own_variables:
                variables[id(variable)] = variable
    return Selection(variables, nodes)


def _is_bias(variable):
    name = variable.name.split("/")[-1]
    return name in ("bias", "beta") or name.endswith("_bias")


def _positive(value, form):
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise KftError(f'"{form}:{value}" needs a positive whole number, e.g. "{form}:2".')
    return n


def _top_level_hint(root):
    names = [c.name for c in root.children]
    return f"Its top-level layers are: {', '.join(names)}."


def _types_hint(root):
    types = sorted({type(n.layer).__name__ for n in root.walk() if n is not root})
    return f"Layer types in this model: {', '.join(types)}."
