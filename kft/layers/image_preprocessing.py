"""The backbone's own input scaling, as a layer inside the model."""

import keras
from keras import ops

# Per-channel (scale, offset) applied as x * scale + offset to 0..255 RGB input,
# plus whether channels are reversed first. These reproduce the modes of
# `keras.applications.imagenet_utils.preprocess_input`.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

MODES = ("none", "tf", "torch", "caffe")


@keras.saving.register_keras_serializable(package="kft")
class ImagePreprocessing(keras.layers.Layer):
    """Scales raw RGB images (0..255) the way a pretrained backbone expects.

    Keeping this inside the model means the trained model, and its TF Serving
    export, take raw images: no client has to know the backbone's convention.

    Args:
        mode: one of `"none"` (pass 0..255 floats through; for backbones that
            rescale internally, such as keras.applications EfficientNet),
            `"tf"` (scale to -1..1), `"torch"` (0..1, then ImageNet mean/std),
            `"caffe"` (RGB to BGR, then subtract the ImageNet BGR means).
            Ignored when `scale` is given.
        scale: optional per-channel (or scalar) multiplier, for backbones with
            their own convention (keras-hub image converters).
        offset: optional per-channel (or scalar) offset, added after `scale`.
        **kwargs: base layer keyword arguments (`name`, `dtype`, ...).

    Example:
    >>> layer = ImagePreprocessing(mode="tf")
    >>> layer(np.array([[[[0, 127.5, 255]]]])).numpy().tolist()
    [[[[-1.0, 0.0, 1.0]]]]
    """

    def __init__(self, mode="none", scale=None, offset=None, **kwargs):
        super().__init__(**kwargs)
        if scale is None and offset is None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
        self.mode = mode
        self.scale = scale
        self.offset = offset

    def _scale_and_offset(self):
        if self.scale is not None or self.offset is not None:
            scale = 1.0 if self.scale is None else self.scale
            offset = 0.0 if self.offset is None else self.offset
            return scale, offset, False
        if self.mode == "tf":
            return 1.0 / 127.5, -1.0, False
        if self.mode == "torch":
            scale = [1.0 / (255.0 * s) for s in _IMAGENET_STD]
            offset = [-m / s for m, s in zip(_IMAGENET_MEAN, _IMAGENET_STD)]
            return scale, offset, False
        if self.mode == "caffe":
            return 1.0, [-m for m in _CAFFE_MEAN_BGR], True
        return 1.0, 0.0, False

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        scale, offset, to_bgr = self._scale_and_offset()
        if to_bgr:
            x = ops.flip(x, axis=-1)
        return x * ops.convert_to_tensor(scale, self.compute_dtype) + ops.convert_to_tensor(
            offset, self.compute_dtype
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode, "scale": self.scale, "offset": self.offset})
        return config
