"""The photo crops that stand in for the ImageNet domain."""

import numpy as np
import pytest

from kft.data.datasets import reference_photos
from kft.errors import KftError


def test_crops_are_seeded_rgb_images_of_the_size_asked_for():
    first = reference_photos.images((24, 32), count=10, seed=0)
    assert first.shape == (10, 24, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, reference_photos.images((24, 32), count=10, seed=0))
    assert not np.array_equal(first, reference_photos.images((24, 32), count=10, seed=1))
    # Colour photographs, not greys: the channels differ.
    assert np.abs(first[..., 0].astype(int) - first[..., 2]).mean() > 5
    assert len(reference_photos.photos()) == 7


def test_count_must_be_positive():
    with pytest.raises(KftError, match="count must be at least 1, got 0"):
        reference_photos.images(16, count=0)
