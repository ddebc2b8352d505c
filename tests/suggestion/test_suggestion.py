"""`kft.suggest` on real ImageNet weights: far data gets a deep plan, near data a shallow one."""

import keras
import numpy as np
import pytest

import kft
from kft.data.datasets import fashion_mnist
from kft.data.datasets import reference_photos
from kft.errors import KftError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lite0():
    return kft.vision.image_classifier("efficientnet_lite0", num_classes=10, weights="imagenet",
                                       image_size=64)


def _state(model):
    return ({v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights},
            [layer.trainable for layer in model._flatten_layers()])


def test_fashion_mnist_is_far_from_the_photos_and_gets_a_deep_plan(lite0):
    kft.freeze(lite0)
    kft.unfreeze(lite0, select="head")
    weights, flags = _state(lite0)
    data = fashion_mnist.image_data(train_size=200, validation_size=50, image_size=(64, 64))
    found = kft.suggest(lite0, data.train, samples=64)
    print({group.name: round(group.distance, 3) for group in found.groups})

    assert [group.name for group in found.groups] == [
        "stem", "block1", "block2", "block3", "block4", "block5", "block6", "block7", "top"]
    # Grey clothes on black are far from colour photos in the middle of the network.
    assert max(group.distance for group in found.groups) > 0.6
    assert 5 <= found.unfreeze <= 9 and found.train == f"groups:{found.unfreeze + 1}"
    assert 0.5 <= found.layer_decay <= 1.0
    assert all(group.gradient_norm > 0 for group in found.groups)
    # Nothing of the model changed: weights bit-identical, the same layers frozen.
    after_weights, after_flags = _state(lite0)
    assert after_flags == flags
    for path, value in weights.items():
        np.testing.assert_array_equal(after_weights[path], value, err_msg=path)


def test_photos_like_the_reference_are_near_everywhere_and_train_the_top_only(lite0):
    images = reference_photos.images(64, count=64, seed=1)
    found = kft.suggest(lite0, (images, np.arange(64) % 10), samples=64)
    assert max(group.distance for group in found.groups) < 0.05
    assert found.unfreeze == 1 and found.shallowest == "top"


def test_reference_images_of_another_size_are_a_clear_error(lite0):
    images = reference_photos.images(64, count=8)
    with pytest.raises(KftError, match=r"reference images are \(32, 32, 3\), the target's "
                                       r"\(64, 64, 3\)"):
        kft.suggest(lite0, (images, np.zeros(8, int)), reference=images[:, :32, :32])
