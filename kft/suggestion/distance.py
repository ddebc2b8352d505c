"""How far a target dataset's features are from the pretraining domain's.

The measure is linear CKA (Kornblith et al. 2019) between a group's pooled
features and the domain label (target or reference) of each example: with a
label as the second representation it is kernel-target alignment
(Cristianini et al. 2002), the share of the features' similarity structure
that is explained by which domain an example comes from. 0 means the group
sees the target data as it sees the pretraining domain; 1 means the domain
is all it sees. It is invariant to scale and to rotations of the features, so
groups of different widths and activation scales compare on one axis, which
a raw MMD or mean distance does not.
"""

import numpy as np

from kft.errors import KftError


def linear_cka(x, y):
    """Linear centered kernel alignment between two representations of the same examples.

    Args:
        x: `[N, D1]` array.
        y: `[N, D2]` array.

    Returns:
        A float in [0, 1]; 0 when either representation is constant.

    Example:
    >>> x = np.random.default_rng(0).normal(size=(100, 8))
    >>> round(linear_cka(x, 2 * x @ np.linalg.qr(np.ones((8, 8)) + np.eye(8))[0]), 6)
    1.0
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise KftError(f"linear_cka needs two [N, D] arrays of the same N, got shapes "
                       f"{x.shape} and {y.shape}.")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    # ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F), with the Gram matrices of the
    # smaller side (N x N when there are fewer examples than features).
    cross = np.linalg.norm(y.T @ x) ** 2
    norm_x = np.linalg.norm(x @ x.T) if len(x) < x.shape[1] else np.linalg.norm(x.T @ x)
    norm_y = np.linalg.norm(y.T @ y)
    if norm_x == 0 or norm_y == 0:
        return 0.0
    return float(cross / (norm_x * norm_y))


def domain_distance(target, reference):
    """Linear CKA between the stacked features of two samples and their domain labels.

    Args:
        target: `[N, D]` features of the target data.
        reference: `[M, D]` features of the reference (pretraining-domain) data.

    Returns:
        A float in [0, 1]: 0 when the two look alike to these features.

    Example:
    >>> rng = np.random.default_rng(0)
    >>> same = domain_distance(rng.normal(size=(200, 16)), rng.normal(size=(200, 16)))
    >>> far = domain_distance(rng.normal(size=(200, 16)) + 3, rng.normal(size=(200, 16)))
    >>> same < 0.05 < 0.5 < far
    True
    """
    target = np.asarray(target, np.float64)
    reference = np.asarray(reference, np.float64)
    if target.ndim != 2 or reference.ndim != 2 or target.shape[1] != reference.shape[1]:
        raise KftError(f"domain_distance needs [N, D] and [M, D] features, got shapes "
                       f"{target.shape} and {reference.shape}.")
    labels = np.zeros((len(target) + len(reference), 2))
    labels[:len(target), 0] = 1
    labels[len(target):, 1] = 1
    return linear_cka(np.concatenate([target, reference]), labels)
