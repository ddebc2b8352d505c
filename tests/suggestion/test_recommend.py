"""The rule from distances and gradient norms to a depth and a layer decay."""

import pytest

from kft.errors import KftError
from kft.suggestion import recommend


@pytest.mark.parametrize("distances, norms, expected", [
    # Far from the first group on (an input-level shift): everything trains.
    ([0.7, 0.8, 0.9, 0.6], [1.0] * 4, (4, 1.0, 0.45)),
    # Near below, far on top: from the first far group up.
    ([0.05, 0.1, 0.5, 0.6], [1.0] * 4, (2, 1.0, 0.3)),
    # Far only at a middle group: training starts there, the top trains too.
    ([0.1, 0.8, 0.2, 0.2], [1.0] * 4, (3, 1.0, 0.4)),
    # Near everywhere: the top group only.
    ([0.01, 0.05, 0.08, 0.02], [1.0] * 4, (1, 1.0, 0.1)),
    # Norms halving per group below the top: decay 0.5.
    ([0.9, 0.9, 0.9], [0.25, 0.5, 1.0], (3, 0.5, 0.45)),
    # Norms falling faster than that: clipped to 0.5; rising below: clipped to 1.
    ([0.9, 0.9, 0.9], [0.01, 0.1, 1.0], (3, 0.5, 0.45)),
    ([0.9, 0.9, 0.9], [4.0, 2.0, 1.0], (3, 1.0, 0.45)),
    # Norms at 0.8 per group: decay 0.8.
    ([0.9, 0.9, 0.9], [0.64, 0.8, 1.0], (3, 0.8, 0.45)),
])
def test_recommendation(distances, norms, expected):
    assert recommend(distances, norms) == expected


@pytest.mark.parametrize("distances, norms", [([], []), ([0.5, 0.5], [1.0])])
def test_recommend_needs_one_of_each_per_group(distances, norms):
    with pytest.raises(KftError, match="one distance and one gradient norm per group"):
        recommend(distances, norms)
