"""Data augmentation as layers inside the model, active only in training."""

import keras

from kft.errors import KftError

_FLIPS = ("horizontal", "vertical", "horizontal_and_vertical")


def augmentation(flip=True, rotation=0.1, zoom=0.1, contrast=0.1, seed=None):
    """Builds the model's augmentation block from Keras random image layers.

    The block goes first in the model, on raw images: it takes pixel values
    in 0..255 (uint8 included) and returns float32 values in 0..255, so the
    backbone's own preprocessing that follows sees the range it expects. The
    layers are random only in training (`fit`); in inference (`predict`,
    `evaluate`, serving) the images pass through unchanged.

    Args:
        flip: `True` or `"horizontal"` for random left-right flips,
            `"vertical"`, `"horizontal_and_vertical"`, or `False` for none.
        rotation: largest rotation as a fraction of a full turn (0.1 is up
            to 36 degrees either way); 0 for none.
        zoom: largest zoom in or out as a fraction of the image size; 0 for
            none.
        contrast: largest contrast change as a fraction; 0 for none.
        seed: optional seed; layer `i` gets `seed + i`.

    Returns:
        A `keras.Sequential` named `"augment"`, or `None` when every option
        is off.

    Example:
    ```python
    model = kft.vision.image_classifier(
        "mobilenetv3small", 5, augment=kft.augmentation(rotation=0.05))
    ```
    """
    if flip is True:
        flip = "horizontal"
    if flip not in (False, None) and flip not in _FLIPS:
        raise KftError(f"flip must be True, False or one of {', '.join(_FLIPS)}; got {flip!r}.")
    for name, factor in (("rotation", rotation), ("zoom", zoom), ("contrast", contrast)):
        if not isinstance(factor, (int, float)) or not 0 <= factor < 1:
            raise KftError(f"{name} must be a fraction in [0, 1) (0 turns it off); got {factor!r}.")

    def seed_for(index):
        return None if seed is None else seed + index

    random_layers = []
    if flip:
        random_layers.append(keras.layers.RandomFlip(flip, seed=seed_for(0), name="flip"))
    if rotation:
        random_layers.append(
            keras.layers.RandomRotation(rotation, seed=seed_for(1), name="rotation")
        )
    if zoom:
        random_layers.append(keras.layers.RandomZoom(zoom, seed=seed_for(2), name="zoom"))
    if contrast:
        random_layers.append(
            keras.layers.RandomContrast(
                contrast, value_range=[0, 255], seed=seed_for(3), name="contrast"
            )
        )
    if not random_layers:
        return None
    # RandomContrast fails on integer input; casting first also gives every
    # configuration the same float32 output.
    to_float = keras.layers.Rescaling(1.0, dtype="float32", name="to_float")
    return keras.Sequential([to_float, *random_layers], name="augment")
