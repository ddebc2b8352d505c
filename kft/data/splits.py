"""Seeded per-class hold-outs, shared by the image and text data sources."""

import numpy as np


def stratified_holdout(labels, fraction, rng):
    """Positions of `fraction` of each class, chosen at random.

    At least one member of every class stays out of the hold-out, so no class
    disappears from training.

    Args:
        labels: a class per row (`[n]` ints).
        fraction: the share of each class to hold out.
        rng: a `numpy.random.Generator`; the same state gives the same rows.

    Returns:
        The held-out row positions, sorted, as int64.
    """
    held_out = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(int(round(fraction * len(members))), len(members) - 1)
        held_out.append(members[:count])
    return np.sort(np.concatenate(held_out)).astype(np.int64)
