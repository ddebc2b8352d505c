import keras
import numpy as np
import pytest
from keras.applications import imagenet_utils

from kft.layers.image_preprocessing import ImagePreprocessing


@pytest.mark.parametrize("mode", ["tf", "torch", "caffe"])
def test_modes_match_keras_applications(mode):
    images = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype("float32")
    expected = imagenet_utils.preprocess_input(images.copy(), mode=mode)
    actual = keras.ops.convert_to_numpy(ImagePreprocessing(mode=mode)(images.astype("uint8")))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_none_mode_passes_values_through_as_floats():
    images = np.arange(48, dtype="uint8").reshape(1, 4, 4, 3)
    out = ImagePreprocessing()(images)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(out), images.astype("float32"))


def test_explicit_scale_and_offset_per_channel():
    layer = ImagePreprocessing(scale=[1 / 127.5] * 3, offset=[-1.0, -1.0, -1.0])
    out = keras.ops.convert_to_numpy(layer(np.array([[[[0, 127.5, 255]]]], "float32")))
    np.testing.assert_allclose(out, [[[[-1.0, 0.0, 1.0]]]], atol=1e-6)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="mode must be one of"):
        ImagePreprocessing(mode="bgr")


def test_keras_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3), dtype="uint8")
    model = keras.Model(inputs, ImagePreprocessing(mode="caffe", name="preprocess")(inputs))
    images = np.random.default_rng(1).integers(0, 256, (2, 4, 4, 3)).astype("uint8")
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(restored.predict(images, verbose=0), model.predict(images, verbose=0))
