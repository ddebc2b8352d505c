"""Linear CKA and the domain distance built on it."""

import numpy as np
import pytest

from kft.errors import KftError
from kft.suggestion import domain_distance
from kft.suggestion import linear_cka


def test_cka_is_one_under_rotation_and_scale_and_symmetric():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    rotation = np.linalg.qr(rng.normal(size=(6, 6)))[0]
    assert linear_cka(x, 3.0 * x @ rotation + 5.0) == pytest.approx(1.0)
    y = rng.normal(size=(50, 4))
    assert linear_cka(x, y) == pytest.approx(linear_cka(y, x))


def test_cka_matches_its_definition_with_more_features_than_examples():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 40)), rng.normal(size=(10, 3))
    xc, yc = x - x.mean(0), y - y.mean(0)
    # Kornblith et al.'s formula with the N x N Gram matrices.
    k, l_ = xc @ xc.T, yc @ yc.T
    expected = np.sum(k * l_) / (np.linalg.norm(k) * np.linalg.norm(l_))
    assert linear_cka(x, y) == pytest.approx(expected)


def test_a_constant_representation_has_zero_alignment():
    assert linear_cka(np.ones((5, 3)), np.arange(10.0).reshape(5, 2)) == 0.0


def test_distance_grows_with_the_shift_between_domains():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16))
    distances = [domain_distance(rng.normal(size=(200, 16)) + shift, reference)
                 for shift in (0.0, 0.25, 1.0, 4.0)]
    assert distances[0] < 0.02
    assert distances == sorted(distances)
    assert distances[-1] > 0.9


@pytest.mark.parametrize("function, arrays, message", [
    (linear_cka, (np.ones((4, 2)), np.ones((5, 2))), r"two \[N, D\] arrays of the same N"),
    (linear_cka, (np.ones(4), np.ones((4, 2))), r"two \[N, D\] arrays"),
    (domain_distance, (np.ones((4, 2)), np.ones((4, 3))), r"\[N, D\] and \[M, D\] features"),
])
def test_bad_shapes_are_clear_errors(function, arrays, message):
    with pytest.raises(KftError, match=message):
        function(*arrays)
