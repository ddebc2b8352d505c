"""Saved layer paths mapped onto another instance of the same model.

Adapter files key their tensors by layer path (`kft.model_tree`). A second
instance of an architecture built in the same session gets auto-numbered
names (`bert_backbone_1`), so a saved path is matched up to that numbering.
"""

import re

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
