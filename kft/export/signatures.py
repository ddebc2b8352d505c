"""The serving signatures of an export: raw client inputs in, labelled classes out.

An image model (one `(H, W, C)` image input) gets two signatures:

- `serving_default`: `image_bytes`, a `tf.string [batch]` of encoded JPEG,
  PNG, GIF (first frame) or BMP files of any size. The graph decodes each
  to RGB (or grey, for `C == 1`), turns JPEG photos upright by their EXIF
  orientation and resizes them to `H x W` the way `kft.data.images` does
  (bilinear, antialiased, rounded to uint8).
- `predict_images`: `images`, already decoded `[batch, H, W, C]` arrays of
  the model's input dtype (uint8 for kft's classifiers).

A text model (one string input) gets `serving_default` only: `text`, a
`tf.string [batch]` of raw strings; its tokenizer is part of the model.
A token classifier gets `serving_default` only: `sentences`, raw strings
split on whitespace; it returns `tags` (`tf.string [batch, words]`, one tag
per word, `""` past a sentence's end) and `num_words` (`int32 [batch]`).

Every classifier's signature returns `probabilities` (`float32 [batch, classes]`),
`class_index` (`int64 [batch]`, the top class) and `label` (`tf.string
[batch]`, that class's name). The model is called with `training=False`, so
dropout and augmentation are off.
"""

import dataclasses

import keras
import tensorflow as tf

from kft.errors import KftError
from kft.export import exif

# Same resampling as kft.data.images, so a served photo matches training.
RESIZE_METHOD = "bilinear"
RESIZE_ANTIALIAS = True


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """What a classifier takes, as far as serving is concerned.

    Attributes:
        kind: `"image"` or `"text"`.
        dtype: the model input's dtype name (`"uint8"`, `"string"`, ...).
        shape: the input's shape without the batch axis.
    """

    kind: str
    dtype: str
    shape: tuple

    @property
    def image_size(self):
        """`(height, width)` of an image input."""
        return tuple(self.shape[:2])

    @property
    def channels(self):
        return self.shape[2]

    def describe(self):
        """A JSON-ready description for `model.json`."""
        if self.kind == "text":
            return {"kind": "text", "serving_default": "raw UTF-8 strings, tf.string [batch]"}
        if self.kind == "token":
            return {"kind": "token", "serving_default": (
                "raw UTF-8 sentences, tf.string [batch], split on whitespace; returns tags "
                "[batch, words] (one tag per word, '' past a sentence's end) and num_words")}
        height, width = self.image_size
        return {
            "kind": "image",
            "height": height,
            "width": width,
            "channels": self.channels,
            "dtype": self.dtype,
            "serving_default": (
                "encoded JPEG, PNG, GIF or BMP bytes of any size, tf.string [batch]; "
                f"decoded to {'RGB' if self.channels == 3 else 'grey'} and resized to "
                f"{height}x{width} ({RESIZE_METHOD}, antialiased, aspect ratio not kept)"
            ),
            "predict_images": (
                f"decoded {self.dtype} arrays [batch, {height}, {width}, {self.channels}]"
            ),
        }


def model_input(model):
    """Works out whether `model` is an image or a text classifier.

    Args:
        model: a built `keras.Model` with one input and one output of shape
            `(batch, classes)`.

    Returns:
        A `ModelInput`.

    Raises:
        KftError: for models kft cannot give a serving signature.
    """
    if _preprocessor(model) is not None and hasattr(model, "tags"):
        # A kft TokenClassifier: sentences in, a tag per word out.
        return ModelInput("token", "string", ())
    if _preprocessor(model) is not None and len(model.outputs) == 1:
        # A keras-hub text task: its preprocessor turns strings into the
        # token inputs of its graph.
        return ModelInput("text", "string", ())
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise KftError(
            f"Model {model.name!r} has {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs; kft exports classifiers with one input "
            "(an image or a string) and one output (class probabilities)."
        )
    output_shape = tuple(model.outputs[0].shape)
    if len(output_shape) != 2 or output_shape[1] is None:
        raise KftError(
            f"Model {model.name!r} outputs shape {output_shape}; kft exports "
            "classifiers whose output is (batch, classes) probabilities."
        )
    tensor = model.inputs[0]
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    shape = tuple(tensor.shape[1:])
    if dtype == "string" and shape in ((), (1,)):
        return ModelInput("text", dtype, shape)
    if dtype != "string" and len(shape) == 3 and None not in shape and shape[2] in (1, 3):
        return ModelInput("image", dtype, shape)
    raise KftError(
        f"Model {model.name!r} takes {dtype} input of shape (batch, "
        f"{', '.join(str(d) for d in shape)}); kft exports image models with a "
        "fixed-size (H, W, 1 or 3) input and text models with a string input of "
        "shape (batch,) or (batch, 1). Rebuild the model with keras.Input("
        "(height, width, 3), dtype='uint8')."
    )


def serving_endpoints(model, labels):
    """The functions to export, with their input signatures.

    Args:
        model: a classifier accepted by `model_input`.
        labels: the class names, one per output class, in output order.

    Returns:
        A list of `(name, function, input_signature)`, `serving_default`
        first, ready for `keras.export.ExportArchive.add_endpoint`.
    """
    spec = model_input(model)
    if spec.kind == "token":
        return [("serving_default", _tagger(model),
                 [tf.TensorSpec([None], tf.string, name="sentences")])]
    classify = _classifier(model, labels)
    if spec.kind == "text":
        preprocessor = _preprocessor(model)

        def serve_text(text):
            inputs = tf.reshape(text, (-1, *spec.shape))
            if preprocessor is not None:
                inputs = preprocessor(inputs)
            return classify(inputs)

        return [("serving_default", serve_text, [tf.TensorSpec([None], tf.string, name="text")])]

    def serve_image_bytes(image_bytes):
        return classify(decode_images(image_bytes, spec.image_size, spec.channels, spec.dtype))

    image_spec = tf.TensorSpec([None, *spec.shape], spec.dtype, name="images")
    return [
        ("serving_default", serve_image_bytes,
         [tf.TensorSpec([None], tf.string, name="image_bytes")]),
        ("predict_images", classify, [image_spec]),
    ]


def decode_images(image_bytes, image_size, channels=3, dtype="uint8"):
    """Decodes and resizes a batch of encoded images, inside a TF graph.

    Args:
        image_bytes: `tf.string [batch]` of JPEG, PNG, GIF or BMP files.
        image_size: `(height, width)` to resize to.
        channels: 3 for RGB, 1 for grey.
        dtype: the dtype of the returned images (values stay 0..255).

    Returns:
        A `[batch, height, width, channels]` tensor.
    """
    def decode(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False)
        # Upright as in training (kft.data.images applies EXIF orientation).
        image = exif.apply_orientation(image, exif.exif_orientation(data))
        image = tf.image.resize(
            image, image_size, method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS
        )
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    images = tf.map_fn(
        decode, image_bytes,
        fn_output_signature=tf.TensorSpec((*image_size, channels), tf.uint8),
    )
    return tf.cast(images, dtype)


def _preprocessor(model):
    from kft.model_tree import is_keras_hub_task

    return getattr(model, "preprocessor", None) if is_keras_hub_task(model) else None


def _tagger(model):
    """Sentences -> one tag per word, as `kft.text.predict_words` gives them."""
    preprocessor = _preprocessor(model)
    tags = tf.constant(list(model.tags), tf.string)

    def tag(sentences):
        features, _, positions = preprocessor.align(sentences)
        probabilities = tf.cast(model(features, training=False), tf.float32)
        predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
        num_words = tf.cast(tf.strings.split(sentences).row_lengths(), tf.int32)
        width = tf.reduce_max(tf.concat([num_words, [0]], axis=0))
        # "O" for words past the sequence length (no prediction), "" past the end.
        inside = tf.range(width)[tf.newaxis, :] < num_words[:, tf.newaxis]
        words = tf.where(inside, tf.constant("O"), tf.constant(""))
        first_pieces = tf.where(positions >= 0)
        word_of_piece = tf.gather_nd(positions, first_pieces)
        where = tf.stack([tf.cast(first_pieces[:, 0], tf.int32), word_of_piece], axis=1)
        predicted_tags = tf.gather(tags, tf.gather_nd(predicted, first_pieces))
        return {"tags": tf.tensor_scatter_nd_update(words, where, predicted_tags),
                "num_words": num_words}

    return tag


def _classifier(model, labels):
    names = list(labels)

    def classify(inputs):
        probabilities = tf.cast(model(inputs, training=False), tf.float32)
        class_index = tf.argmax(probabilities, axis=-1)
        return {
            "probabilities": probabilities,
            "class_index": class_index,
            "label": tf.gather(tf.constant(names, tf.string), class_index),
        }

    return classify
