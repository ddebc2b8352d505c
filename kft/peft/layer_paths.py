"""Layer paths: `/`-joined layer names from the top model, and selectors on them.

A path such as `bert_backbone/transformer_layer_0/self_attention_layer/query`
names a layer wherever it sits: in a functional graph, a nested model, or
inside a keras-hub block. PEFT targets, adapter files and error messages all
use these paths.
"""

import re

import keras

from kft.errors import KftError

_LISTED = 40  # candidate paths shown in an error message


def sublayers(layer):
    """The layers directly tracked by `layer`, input layers left out."""
    return [
        child for child in getattr(layer, "_layers", [])
        if not isinstance(child, keras.layers.InputLayer)
    ]


def layer_paths(model):
    """Every layer under `model`, by path, in depth-first order.

    A layer reachable along several paths (shared) is listed once, under the
    first.

    Args:
        model: a Keras model or layer.

    Returns:
        A dict `{path: layer}`.
    """
    found = {}
    seen = set()

    def visit(layer, prefix):
        for child in sublayers(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            found[path] = child
            visit(child, path)

    visit(model, "")
    return found


def path_of(model, layer):
    """The path of `layer` under `model`."""
    for path, candidate in layer_paths(model).items():
        if candidate is layer:
            return path
    raise KftError(f"Layer '{layer.name}' is not part of model '{model.name}'.")


def matches(path, selector):
    """Whether `path` is selected.

    Args:
        path: a layer path.
        selector: a regular expression matched against the whole path
            (a string), or a list of path suffixes (whole names:
            `"query"` matches `.../query`, not `.../key_query`).
    """
    if isinstance(selector, str):
        return re.fullmatch(selector, path) is not None
    return any(path == s or path.endswith("/" + s) for s in selector)


def select_layers(model, selector, what, candidates=None):
    """The `(path, layer)` pairs `selector` picks; an error if there are none.

    Args:
        model: the model to search.
        selector: see `matches`.
        what: what the layers are for, for the error message (`"LoRA
            targets"`).
        candidates: optional `{path: layer}` to search and to list in the
            error; all layers by default.

    Returns:
        A list of `(path, layer)`.
    """
    if isinstance(selector, str):
        try:
            re.compile(selector)
        except re.error as error:
            raise KftError(f"{what}: {selector!r} is not a valid regular expression ({error}).")
    elif not isinstance(selector, (list, tuple)) or not all(
        isinstance(s, str) for s in selector
    ):
        raise KftError(
            f"{what} must be a regular expression (a string) or a list of "
            f"layer-name suffixes, got {selector!r}."
        )
    paths = layer_paths(model) if candidates is None else candidates
    chosen = [(p, layer) for p, layer in paths.items() if matches(p, selector)]
    if not chosen:
        kind = (
            "the regular expression (matched against the whole path)"
            if isinstance(selector, str) else "the suffixes"
        )
        raise KftError(
            f"{what}: {kind} {selector!r} matched no layer of model "
            f"'{model.name}'. Candidate layer paths:\n  "
            + describe_paths(paths)
        )
    return chosen


def describe_paths(paths):
    """A newline-separated listing of paths (truncated) for error messages."""
    listed = [f"{p} ({type(layer).__name__})" for p, layer in paths.items()]
    if len(listed) > _LISTED:
        listed = listed[:_LISTED] + [f"... and {len(listed) - _LISTED} more"]
    return "\n  ".join(listed) if listed else "(none)"


_AUTO_NUMBER = re.compile(r"_\d+$")


def canonical_path(path):
    """`path` without Keras' auto-numbering (`dense_3` -> `dense`) per segment."""
    return "/".join(_AUTO_NUMBER.sub("", segment) for segment in path.split("/"))


def match_saved_paths(saved, paths):
    """Maps paths saved from one model instance onto another's layer paths.

    A second instance of the same architecture built in one session gets
    auto-numbered names (`bert_backbone_1`). A saved path present as is maps
    to itself; otherwise to the model path that equals it up to
    auto-numbering and shares the most segments exactly, if that one is
    unique.

    Args:
        saved: the saved paths.
        paths: the model's `{path: layer}`.

    Returns:
        `(mapping, missing)`: `{saved path: model path}` and the saved paths
        with no unique match.
    """
    by_canonical = {}
    for path in paths:
        by_canonical.setdefault(canonical_path(path), []).append(path)
    mapping, missing = {}, []
    for path in saved:
        if path in paths:
            mapping[path] = path
            continue
        candidates = by_canonical.get(canonical_path(path), [])
        segments = path.split("/")

        def exact(candidate):
            return sum(a == b for a, b in zip(segments, candidate.split("/")))

        ranked = sorted(candidates, key=exact, reverse=True)
        if ranked and (len(ranked) == 1 or exact(ranked[0]) > exact(ranked[1])):
            mapping[path] = ranked[0]
        else:
            missing.append(path)
    return mapping, missing
