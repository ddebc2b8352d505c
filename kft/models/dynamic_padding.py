"""Pad each batch of texts to what it needs, not to the sequence length.

A keras-hub text classifier's preprocessor packs every text to
`sequence_length` tokens, so a batch of 15-token reviews costs as much as a
batch of 64-token ones. With `pad_to_batch_longest`, its packer pads each batch
to the batch's longest text instead, rounded up to a multiple of 8 (as Hugging
Face's `DataCollatorWithPadding(pad_to_multiple_of=8)` does): at most
`sequence_length / 8` distinct shapes, so traced functions stay few. Texts
longer than `sequence_length` are still truncated to it.

The results equal the fixed-length model's within float tolerance: the
attention mask keeps real tokens from attending to padding, and the
classifier reads the first token. kft's text classifiers get it when built
(`kft.text.text_classifier`) and when loaded (`kft.saving.load_model`; the
packer is rebuilt from the preprocessor's config, which does not record it).
kft's `TokenClassifierPreprocessor` pads the same way (`pad_to_multiple_of`).
"""

import keras
import keras_hub
import tensorflow as tf

# Shapes are rounded up to this many tokens: few traces, little waste.
PAD_TO_MULTIPLE_OF = 8


def padded_length(lengths, sequence_length, multiple=PAD_TO_MULTIPLE_OF):
    """The width a batch is padded to: its longest row, rounded up, at most
    `sequence_length` (a scalar int32 tensor)."""
    longest = tf.reduce_max(tf.concat([tf.cast(lengths, tf.int32), [1]], axis=0))
    rounded = -(-longest // multiple) * multiple
    return tf.minimum(rounded, tf.cast(sequence_length, tf.int32))


@keras.saving.register_keras_serializable(package="kft")
class BatchLongestPacker(keras_hub.layers.MultiSegmentPacker):
    """A `MultiSegmentPacker` that pads each batch to its longest row.

    It packs as keras-hub's packer does (same truncation, start, separator
    and end tokens, at most `sequence_length`), then drops the trailing
    columns that are padding in every row, keeping a multiple of
    `pad_to_multiple_of`.

    Args:
        pad_to_multiple_of: the width is rounded up to a multiple of this.
        **kwargs: `MultiSegmentPacker` arguments.

    Example:
    ```python
    packer = BatchLongestPacker(sequence_length=64, start_value=101,
                                end_value=102, pad_value=0)
    token_ids, segment_ids = packer(tf.ragged.constant([[7, 8, 9]]))
    token_ids.shape  # (1, 8): 101 7 8 9 102 and three pads
    ```
    """

    def __init__(self, pad_to_multiple_of=PAD_TO_MULTIPLE_OF, **kwargs):
        super().__init__(**kwargs)
        if int(pad_to_multiple_of) < 1:
            raise ValueError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}.")
        self.pad_to_multiple_of = int(pad_to_multiple_of)

    def call(self, inputs, sequence_length=None, add_start_value=True, add_end_value=True):
        token_ids, segment_ids = super().call(
            inputs, sequence_length=sequence_length, add_start_value=add_start_value,
            add_end_value=add_end_value)
        token_ids, segment_ids = tf.convert_to_tensor(token_ids), tf.convert_to_tensor(
            segment_ids)
        if token_ids.shape.rank != 2:  # one unbatched text: nothing to share
            return token_ids, segment_ids
        real = tf.reduce_sum(tf.cast(token_ids != self.pad_value, tf.int32), axis=1)
        width = padded_length(real, tf.shape(token_ids)[1], self.pad_to_multiple_of)
        if self.padding_side == "left":
            return token_ids[:, -width:], segment_ids[:, -width:]
        return token_ids[:, :width], segment_ids[:, :width]

    def get_config(self):
        config = super().get_config()
        config["pad_to_multiple_of"] = self.pad_to_multiple_of
        return config


def pad_to_batch_longest(model, multiple=PAD_TO_MULTIPLE_OF):
    """Makes a keras-hub text classifier pad each batch to its longest text.

    Replaces the preprocessor's `MultiSegmentPacker` with a
    `BatchLongestPacker` of the same settings. Other models (no preprocessor,
    another packer, kft's token classifier, which pads by itself) are left
    as they are.

    Args:
        model: a keras-hub `TextClassifier` (or any model).
        multiple: pad widths to a multiple of this many tokens.

    Returns:
        Whether the packer was replaced.
    """
    preprocessor = getattr(model, "preprocessor", None)
    if not isinstance(preprocessor, keras_hub.models.TextClassifierPreprocessor):
        return False
    if getattr(preprocessor, "packer", None) is None:
        preprocessor.build(None)  # keras-hub creates the packer in build()
    packer = preprocessor.packer
    if type(packer) is not keras_hub.layers.MultiSegmentPacker:
        return isinstance(packer, BatchLongestPacker)
    replacement = BatchLongestPacker(pad_to_multiple_of=multiple, **packer.get_config())
    # Past build() Keras refuses new sub-layers; the packer holds no state to
    # track or save (keras-hub rebuilds it from the preprocessor's config).
    object.__setattr__(preprocessor, "packer", replacement)
    return True


def predict_by_length(model, texts, batch_size=32, callbacks=None):
    """`model.predict` on raw texts in batches of similar length, in the input order.

    With a model that pads each batch to its longest text, sorting by length
    first lets short texts run in narrow batches; the probabilities come back
    in the order of `texts`.

    Args:
        model: a text model taking raw strings (`kft.text.text_classifier`).
        texts: a list or array of strings.
        batch_size: texts per batch.
        callbacks: Keras callbacks for `predict` (a progress bar).

    Returns:
        A numpy array, one row per text.
    """
    import numpy as np

    texts = [text.decode("utf-8") if isinstance(text, bytes) else str(text) for text in texts]
    order = np.argsort([len(text) for text in texts], kind="stable")
    dataset = tf.data.Dataset.from_tensor_slices(np.array(texts, dtype=object)[order].astype(str))
    sorted_outputs = model.predict(dataset.batch(batch_size), verbose=0, callbacks=callbacks)
    outputs = np.empty_like(sorted_outputs)
    outputs[order] = sorted_outputs
    return outputs
