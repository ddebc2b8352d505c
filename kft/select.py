"""One language for "which layers": every kft argument that names layers speaks it.

`kft.freeze`/`kft.unfreeze(select=...)`, `Stage(train=...)`,
`kft.peft.apply_lora(targets=..., train_also=...)`, `load_model(train_also=...)`
and `LayerwiseLR(multipliers={...}, no_decay=...)` all take a selection:

- a string spec: parts joined by commas (their union), each one of
  `"all"`, `"head"`, `"biases"`, `"norms"`, `"adapters"`, `"top:N"` (the last
  N layers with weights), `"groups:N"` (the last N layer groups),
  `"type:LayerClass"`, `"name:PATTERN"`, or a bare `PATTERN`;
- a selector object: `Name`, `Type`, `TopLayers`, `LastGroups`, `Biases`,
  `Norms`, `Head`, `Adapters`, `All`, `Where`, combined with `|` (union),
  `&` (intersection) and `-` (difference);
- a callable `(path, layer) -> bool`, or a list of any of these (union).

Names: a PATTERN is a regular expression that must match one or more whole
segments of a path, in full: `"query"` matches
`bert_backbone/transformer_layer_0/self_attention_layer/query`, not
`.../key_query`; `"conv5_.*"` matches `backbone/conv5_block1_1_conv`;
`"transformer_layer_0/.*_norm"` matches the norms of that block; `"a"`
matches layer `a` but not `b/bias`. A variable's path is its layer's path
plus its name, so `"head_dense/bias"` selects that one variable. The keywords
win over layer names: a layer named `head` is `"name:head"`.

Selecting a layer selects everything below it: `"backbone"` is the whole
backbone. A selection, or one plain part of it, that matches nothing is an
error that lists what the model has instead.
"""

import dataclasses
import difflib
import re


from kft.errors import KftError
from kft.model_tree import HEAD_PREFIX
from kft.model_tree import head_layers
from kft.model_tree import is_bias_variable
from kft.model_tree import is_norm_layer
from kft.model_tree import is_norm_variable_path
from kft.model_tree import units

SPEC_FORMS = (
    '"all", "head", "biases", "norms", "adapters", "top:N", "groups:N", '
    '"type:LayerClass", "name:PATTERN" or a bare PATTERN (a regex of whole layer-path '
    "segments), or several of these joined by commas"
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

    def layers(self):
        """The selected nodes' layers, in no particular order."""
        return [node.layer for node in self.nodes.values()]


class Selector:
    """Base class: picks part of a layer tree.

    Subclasses implement `matches(node)` (a layer and everything below it is
    selected when it matches) or override `resolve`. Those that can also
    pick variables without a model (an optimizer built without one) implement
    `matches_variable(path, variable)`.
    """

    def matches(self, node):
        raise NotImplementedError

    def resolve(self, root):
        """Returns the `Selection` this selector makes in the tree at `root`."""
        picked = [n for n in root.walk() if n is not root and self.matches(n)]
        return _covering(picked)

    def matches_variable(self, path, variable):
        """Whether a variable is selected, knowing only its Keras path."""
        raise KftError(
            f"select={self!r} needs the model's layers: pass the model (model=...)."
        )

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

    def matches_variable(self, path, variable):
        return True

    def __repr__(self):
        return '"all"'


class Head(Selector):
    """The head: top-level `head_*` layers, or a keras-hub task's layers above
    its backbone (see `kft.model_tree.head_layers`)."""

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
    """Layers, or variables, whose path has whole segments matching a regex.

    Args:
        pattern: a regular expression that must match one or more
            consecutive segments of the path in full (see the module
            docstring): `"query"`, `"conv5_.*"`, `"backbone/block2_conv"`.
    """

    def __init__(self, pattern):
        try:
            self.regex = re.compile(pattern)
        except (re.error, TypeError) as error:
            raise KftError(f"name:{pattern} is not a valid regular expression: {error}.")
        self.pattern = pattern

    def resolve(self, root):
        nodes, variables = {}, {}
        for node in root.walk():
            if node is root:
                continue
            if path_matches(self.regex, node.path):
                picked = _covering([node])
                nodes.update(picked.nodes)
                variables.update(picked.variables)
                continue
            for variable in node.own_variables:
                if path_matches(self.regex, node.variable_path(variable)):
                    variables[id(variable)] = variable
                    nodes[id(node)] = node
        return Selection(variables, nodes)

    def matches_variable(self, path, variable):
        return path_matches(self.regex, path)

    def hint(self, root):
        nodes = [n for n in root.walk() if n is not root]
        names = difflib.get_close_matches(self.pattern, sorted({n.name for n in nodes}), n=8)
        shown = ", ".join(n.path for n in nodes if n.name in names)[:600] or "none"
        return (
            "A pattern must match whole path segments (e.g. 'query', 'conv5_.*'). "
            f"Closest layer paths: {shown}. " + _top_level_hint(root)
        )

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
        return node.is_leaf and is_norm_layer(node.layer)

    def matches_variable(self, path, variable):
        return is_norm_variable_path(path)

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
        # Groups are built on this module's trees: imported here, not above.
        from kft.freezing.groups import layer_groups

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
                if is_bias_variable(variable):
                    variables[id(variable)] = variable
                    nodes[id(node)] = node
        return Selection(variables, nodes)

    def matches_variable(self, path, variable):
        return is_bias_variable(variable)

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

    def matches_variable(self, path, variable):
        left = self.left.matches_variable(path, variable)
        right = self.right.matches_variable(path, variable)
        return {"|": left or right, "&": left and right, "-": left and not right}[self.op]

    def atoms(self):
        return self.left.atoms() + self.right.atoms()

    def __repr__(self):
        return f"({self.left!r} {self.op} {self.right!r})"


def path_matches(regex, path):
    """Whether `regex` matches one or more consecutive whole segments of `path`.

    Args:
        regex: a compiled regular expression (or a pattern string).
        path: a `/`-joined layer or variable path.
    """
    regex = re.compile(regex) if isinstance(regex, str) else regex
    segments = path.split("/")
    return any(
        regex.fullmatch("/".join(segments[start:end]))
        for start in range(len(segments))
        for end in range(start + 1, len(segments) + 1)
    )


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


def parse_selector(spec):
    """Parses a string spec such as `"head,conv5_.*"` into a `Selector`.

    Args:
        spec: see the module docstring; commas inside brackets or braces of
            a pattern (`"conv{1,2}"`) do not split it.

    Returns:
        A `Selector`.

    Example:
    ```python
    kft.unfreeze(model, "groups:2,norms")
    kft.freeze(model, "low|bn|mid")   # layers named low, bn or mid
    ```
    """
    parts = [p.strip() for p in _split_top_level(spec.strip())]
    parts = [p for p in parts if p]
    if not parts:
        raise KftError(f"select={spec!r} is empty. Use {SPEC_FORMS}.")
    return _union([_parse_part(p) for p in parts])


_KEYWORDS = {"all": All, "head": Head, "biases": Biases, "norms": Norms, "adapters": Adapters}
_PREFIXED = {"top": TopLayers, "groups": LastGroups, "name": Name, "type": Type}


def _parse_part(part):
    if part in _KEYWORDS:
        return _KEYWORDS[part]()
    kind, colon, value = part.partition(":")
    if not colon:
        return Name(part)
    if kind in _PREFIXED and value:
        return _PREFIXED[kind](value)
    raise KftError(f"Unknown selection {part!r}. Use {SPEC_FORMS}.")


def _split_top_level(spec):
    parts, depth, current = [], 0, []
    for char in spec:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


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


def select_variables(select, variables):
    """The variables `select` picks among `variables`, without their model.

    Names are matched against Keras' `variable.path` (its layer's name scope
    and its name); biases and norm parameters are told by their names. Other
    selections need the model's layers.

    Args:
        select: anything `as_selector` accepts.
        variables: Keras variables.

    Returns:
        The picked variables, in order.
    """
    selector = as_selector(select)
    return [v for v in variables if selector.matches_variable(v.path, v)]


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
