"""Image classifiers from pretrained backbones: keras.applications and keras-hub."""

import os
import warnings

import keras

from kft.errors import KftError
from kft.models.augmentation import augmentation  # noqa: F401  (kft.vision.augmentation)
from kft.layers.image_preprocessing import ImagePreprocessing

# name -> (keras.applications constructor name, preprocessing mode, extra kwargs).
# Families whose constructor rescales internally take 0..255 ("none").
_APPLICATIONS = {
    "resnet50": ("ResNet50", "caffe", {}),
    "resnet101": ("ResNet101", "caffe", {}),
    "efficientnetb0": ("EfficientNetB0", "none", {}),
    "efficientnetb1": ("EfficientNetB1", "none", {}),
    "efficientnetb2": ("EfficientNetB2", "none", {}),
    "efficientnetb3": ("EfficientNetB3", "none", {}),
    "efficientnetv2b0": ("EfficientNetV2B0", "none", {}),
    "efficientnetv2b1": ("EfficientNetV2B1", "none", {}),
    "efficientnetv2b2": ("EfficientNetV2B2", "none", {}),
    "efficientnetv2b3": ("EfficientNetV2B3", "none", {}),
    "efficientnetv2s": ("EfficientNetV2S", "none", {}),
    "mobilenetv2": ("MobileNetV2", "tf", {}),
    "mobilenetv3small": ("MobileNetV3Small", "none", {}),
    "mobilenetv3large": ("MobileNetV3Large", "none", {}),
    "convnexttiny": ("ConvNeXtTiny", "none", {}),
    "convnextsmall": ("ConvNeXtSmall", "none", {}),
    "vgg16": ("VGG16", "caffe", {}),
}

# Backbones kft can load with real ImageNet weights without a hub, from a
# registry package (see kft.models.weights.efficientnet_lite0).
_OFFLINE_KERAS_HUB = {"efficientnetlite0"}

BACKBONES = tuple(sorted(_APPLICATIONS)) + ("efficientnet_lite0",)


def image_classifier(
    backbone,
    num_classes,
    weights="imagenet",
    image_size=224,
    dropout=0.2,
    augment=None,
    name=None,
):
    """Builds an image classifier: raw uint8 RGB in, class probabilities out.

    The model is `image -> [augment] -> preprocess -> backbone -> head_pool ->
    head_dropout -> head_dense`. The backbone's own input scaling lives in the
    `preprocess` layer, so the model (and its serving export) takes raw images.
    The head is the top-level layers whose names start with `head_`.

    Args:
        backbone: a keras.applications family name (`"resnet50"`,
            `"efficientnetb0"`, `"mobilenetv3small"`, ... see `BACKBONES`),
            `"efficientnet_lite0"`, a keras-hub image preset name or local
            preset directory, or a `keras.Model` that maps images to features.
        num_classes: number of output classes.
        weights: `"imagenet"` (downloaded when online; for
            `"efficientnet_lite0"` read from a registry package, no hub
            needed), `None` or `"none"` for random initialisation, or a path
            to a local weights file for the backbone.
        image_size: side of the square input images, or an `(h, w)` pair.
        dropout: dropout rate before the classification layer.
        augment: optional layer applied to the raw images first (see
            `kft.models.augmentation.augmentation`); active only in training.
        name: optional model name.

    Returns:
        A `keras.Model` with a nested model named `"backbone"`.

    Example:
    ```python
    model = kft.vision.image_classifier("mobilenetv3small", 5, weights=None,
                                        image_size=96)
    model.predict(np.zeros((1, 96, 96, 3), "uint8")).shape  # (1, 5)
    ```
    """
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    weights = _normalise_weights(weights)
    if isinstance(backbone, keras.Model):
        net, preprocess = backbone, ImagePreprocessing(mode="none", name="preprocess")
        label = backbone.name
    else:
        net, preprocess = _backbone(str(backbone), weights, image_size)
        label = str(backbone)

    inputs = keras.Input((*image_size, 3), dtype="uint8", name="image")
    x = augment(inputs) if augment is not None else inputs
    x = preprocess(x)
    x = net(x)
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 also under mixed precision: a 16-bit softmax rounds small
    # probabilities to zero.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="head_dense"
    )(x)
    model_name = name or f"{_key(label)}_classifier"
    return keras.Model(inputs, outputs, name=model_name)


def _key(name):
    return os.path.basename(str(name).rstrip("/")).lower().replace("_", "").replace("-", "")


def _normalise_weights(weights):
    if weights is None or str(weights).lower() in ("none", "random", ""):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    path = os.path.expanduser(str(weights))
    if not os.path.exists(path):
        raise KftError(
            f"weights={weights!r} is neither 'imagenet', 'none' nor an existing file."
        )
    return path


def _backbone(name, weights, image_size):
    key = _key(name)
    if key in _APPLICATIONS:
        return _applications_backbone(key, weights, image_size)
    if key in _OFFLINE_KERAS_HUB:
        from kft.models.weights import efficientnet_lite0 as weight_sources

        return _keras_hub_backbone(weight_sources.efficientnet_lite0_imagenet(), weights)
    if os.path.isdir(name) or "://" in name or _is_keras_hub_preset(name):
        return _keras_hub_backbone(name, weights)
    raise KftError(
        f"Unknown backbone {name!r}. Use one of {', '.join(BACKBONES)}, "
        "a keras-hub image preset, or a keras.Model."
    )


def _applications_backbone(key, weights, image_size):
    constructor_name, mode, kwargs = _APPLICATIONS[key]
    constructor = getattr(keras.applications, constructor_name)
    build = dict(include_top=False, input_shape=(*image_size, 3), **kwargs)
    if weights == "imagenet":
        try:
            net = constructor(weights="imagenet", **build)
        except Exception as error:  # keras raises a bare Exception on URL failure.
            raise KftError(
                f"Could not download the ImageNet weights for {key} ({error}). "
                "Download the notop .h5 file elsewhere and pass weights=PATH "
                "(--set weights=PATH), or use weights=none."
            ) from error
    else:
        net = constructor(weights=None, **build)
        if weights is not None:
            _load_local_weights(net, weights)
    net.name = "backbone"
    return net, ImagePreprocessing(mode=mode, name="preprocess")


def _load_local_weights(net, path):
    # Keras only warns when parts of a file do not match and keeps random
    # weights there; a half-loaded backbone must not pass silently.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            net.load_weights(path)
            error = None
        except Exception as raised:
            error = raised
    skipped = [w for w in caught if "Skipping" in str(w.message)]
    if error is not None or skipped:
        reason = error if error is not None else skipped[0].message
        raise KftError(
            f"Could not load backbone weights from {path}: {reason} The file must "
            "hold weights for this backbone without its top (include_top=False)."
        ) from error


def _is_keras_hub_preset(name):
    import keras_hub

    return name in keras_hub.models.Backbone.presets


def _keras_hub_backbone(preset, weights):
    import keras_hub

    local_file = weights not in (None, "imagenet")
    try:
        net = keras_hub.models.Backbone.from_preset(
            preset, load_weights=weights == "imagenet"
        )
        converter = keras_hub.layers.ImageConverter.from_preset(preset)
    except Exception as error:
        raise KftError(
            f"Could not load the keras-hub preset {preset!r} ({error}). Offline, "
            "pass a local preset directory."
        ) from error
    if local_file:
        _load_local_weights(net, weights)
    net.name = "backbone"
    preprocess = ImagePreprocessing(
        scale=_plain(converter.scale), offset=_plain(converter.offset), name="preprocess"
    )
    return net, preprocess


def _plain(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return float(value)
