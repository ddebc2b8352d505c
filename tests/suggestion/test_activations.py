"""Group outputs read from inside a nested backbone."""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.suggestion import group_feature_model
from kft.suggestion import pooled_features
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data


def test_each_group_gives_its_last_layers_output_averaged_over_space():
    model = tiny_classifier(blocks=4)
    features, names = group_feature_model(model)
    # The tiny backbone is unknown to kft: four even groups, one conv block each.
    assert names == ["group_1", "group_2", "group_3", "group_4"]
    images = tiny_data(6)[0]
    found = pooled_features(features, images, batch_size=4)
    backbone = model.get_layer("backbone")
    for index, pooled in enumerate(found):
        block = keras.Model(backbone.inputs, backbone.get_layer(f"relu{index}").output)
        expected = block.predict(images / 255.0, verbose=0).mean(axis=(1, 2))
        np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)
        assert pooled.shape == (6, 4) and pooled.dtype == np.float64


def test_a_model_without_a_functional_graph_is_a_clear_error():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__(name="subclassed")
            self.conv = keras.layers.Conv2D(2, 3)
            self.head_dense = keras.layers.Dense(2)

        def call(self, x):
            return self.head_dense(keras.ops.mean(self.conv(x), axis=(1, 2)))

    model = Subclassed()
    model(np.zeros((1, 8, 8, 3)))
    with pytest.raises(KftError, match="not inside a functional model"):
        group_feature_model(model)
