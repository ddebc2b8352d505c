import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.models import vision


@pytest.mark.parametrize(
    "backbone, size",
    [("mobilenetv3small", 32), ("mobilenetv2", 32), ("efficientnetb0", 32), ("resnet50", 32)],
)
def test_builds_kft_layout_on_raw_uint8_images(backbone, size):
    model = vision.image_classifier(backbone, 4, weights=None, image_size=size)
    assert model.inputs[0].dtype == "uint8"
    assert model.get_layer("backbone").name == "backbone"
    assert [layer.name for layer in model.layers[-3:]] == ["head_pool", "head_dropout", "head_dense"]
    probabilities = model.predict(np.zeros((2, size, size, 3), "uint8"), verbose=0)
    assert probabilities.shape == (2, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_caffe_family_gets_caffe_preprocessing():
    model = vision.image_classifier("resnet50", 2, weights=None, image_size=32)
    assert model.get_layer("preprocess").mode == "caffe"


def test_failed_download_says_how_to_pass_local_weights():
    # This machine has no route to the weights bucket: the real failure path.
    with pytest.raises(KftError, match=r"(?s)Could not download the ImageNet weights for mobilenetv2.*weights=PATH"):
        vision.image_classifier("mobilenetv2", 2, weights="imagenet", image_size=32)


def test_local_weights_file_is_loaded(tmp_path):
    source = keras.applications.MobileNetV3Small(
        weights=None, include_top=False, input_shape=(32, 32, 3)
    )
    path = tmp_path / "backbone.weights.h5"
    source.save_weights(path)
    model = vision.image_classifier("mobilenetv3small", 2, weights=str(path), image_size=32)
    for expected, actual in zip(source.weights, model.get_layer("backbone").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected))


def test_wrong_local_weights_file_is_a_clear_error(tmp_path):
    other = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(KftError, match="Could not load backbone weights"):
        vision.image_classifier("mobilenetv3small", 2, weights=str(path), image_size=32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backbone="resnet9000"), "Unknown backbone 'resnet9000'"),
        (dict(backbone="resnet50", weights="/no/such/file.h5"), "neither 'imagenet', 'none' nor an existing file"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(KftError, match=message):
        vision.image_classifier(num_classes=2, image_size=32, **kwargs)


def test_a_keras_model_as_backbone_and_round_trip(tmp_path):
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    model = vision.image_classifier(keras.Model(inputs, features), 3, image_size=16)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype("uint8")
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(restored.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6)
