"""kft.models.augmentation: random image layers that act only in training."""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.models.augmentation import augmentation
from kft.layers.image_preprocessing import ImagePreprocessing


def photos(count=4, size=32, seed=0):
    """Images with structure (a bright left half), so flips and rotations show."""
    pixels = np.random.default_rng(seed).integers(0, 120, (count, size, size, 3))
    pixels[:, :, : size // 2] += 120
    return pixels.astype(np.uint8)


def small_model(augment, size=32):
    inputs = keras.Input((size, size, 3), dtype="uint8", name="image")
    x = augment(inputs)
    x = ImagePreprocessing(mode="tf", name="preprocess")(x)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head_dense")(x)
    return keras.Model(inputs, outputs)


def test_everything_off_means_no_block():
    assert augmentation(flip=False, rotation=0, zoom=0, contrast=0) is None


def test_default_block_holds_the_four_random_layers():
    block = augmentation()

    assert isinstance(block, keras.Sequential) and block.name == "augment"
    assert [type(layer).__name__ for layer in block.layers] == [
        "Rescaling", "RandomFlip", "RandomRotation", "RandomZoom", "RandomContrast"]
    assert block.get_layer("flip").mode == "horizontal"
    assert augmentation(flip="vertical", rotation=0, zoom=0, contrast=0).get_layer(
        "flip").mode == "vertical"


def test_inference_passes_images_through_unchanged():
    x = photos()

    out = augmentation(seed=1)(x, training=False)

    assert out.dtype == "float32"  # What the preprocessing layer after it takes.
    np.testing.assert_array_equal(np.asarray(out), x.astype(np.float32))


@pytest.mark.parametrize("options", [
    dict(flip=True, rotation=0, zoom=0, contrast=0),
    dict(flip=False, rotation=0.2, zoom=0, contrast=0),
    dict(flip=False, rotation=0, zoom=0.3, contrast=0),
    # Alone, RandomContrast would get uint8 input, which it cannot handle.
    dict(flip=False, rotation=0, zoom=0, contrast=0.5),
    dict(),
], ids=["flip", "rotation", "zoom", "contrast", "all"])
def test_training_changes_uint8_images_within_0_to_255(options):
    x = photos(count=8)

    out = np.asarray(augmentation(seed=3, **options)(x, training=True))

    assert out.dtype == np.float32 and out.shape == x.shape
    assert not np.array_equal(out, x.astype(np.float32))
    assert out.min() >= 0 and out.max() <= 255


def test_same_seed_same_augmentation():
    x = photos()
    first = augmentation(seed=5)(x, training=True)
    again = augmentation(seed=5)(x, training=True)
    other = augmentation(seed=6)(x, training=True)

    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))


def test_block_trains_and_survives_a_keras_round_trip(tmp_path):
    model = small_model(augmentation(seed=2))
    model.compile("adam", "sparse_categorical_crossentropy")
    x, y = photos(count=8), np.array([0, 1] * 4)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # Random layers in a graph.
    path = tmp_path / "model.keras"

    model.save(path)
    loaded = keras.models.load_model(path)

    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    block = loaded.get_layer("augment")
    assert [layer.get_config() for layer in block.layers] == [
        layer.get_config() for layer in model.get_layer("augment").layers]
    assert not np.array_equal(np.asarray(block(x, training=True)), x.astype(np.float32))


def test_bad_options_are_clear_errors():
    with pytest.raises(KftError, match=r"flip must be True, False or one of horizontal"):
        augmentation(flip="diagonal")
    with pytest.raises(KftError, match=r"rotation must be a fraction in \[0, 1\).*got 30"):
        augmentation(rotation=30)
    with pytest.raises(KftError, match=r"zoom must be a fraction.*got -0.1"):
        augmentation(zoom=-0.1)
    with pytest.raises(KftError, match=r"contrast must be a fraction.*got 'high'"):
        augmentation(contrast="high")
