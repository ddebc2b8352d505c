"""Token classification (named entities) on keras-hub WordPiece encoders.

Labels belong to words; a BERT-style encoder sees wordpieces. The model's
preprocessor splits each sentence on whitespace, tokenizes every word on its
own and packs the pieces; the first piece of each word carries the word's
label and every other position (later pieces, `[CLS]`, `[SEP]`, padding) gets
label -1, which the loss (`ignore_class=-1`) and `EntityF1` skip. The mask
travels in the labels, not in sample weights, because Keras hands sample
weights only to `weighted_metrics`: metrics given as `metrics=` (what
`kft.Recipe` compiles with) would count padding and later pieces.
`predict_words` reads the prediction of each word's first piece back.

Why the preprocessor lives in the model: a `TokenClassifier` is a keras-hub
`Task`, so `fit`, `evaluate` and `predict` take raw sentences (strings, or
lists of words) and run the alignment inside `tf.data`, and the saved
`.keras` file holds the tokenizer, its vocabulary and the tag names. A
reloaded model tags raw text with no other file. (A functional model that
calls a tokenizer inside its graph cannot be reloaded: the graph is rebuilt
before the vocabulary asset is restored.)

Example:
```python
data = kft.data.token_labels.load("train.conll", validation="dev.conll")
model = kft.text.token_classifier("minilm", data.class_names)
model.compile(
    optimizer=keras.optimizers.AdamW(5e-5),
    loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=-1),
    metrics=[kft.evaluation.entities.EntityF1()],
)
model.fit(data.train, validation_data=data.validation, epochs=3)
kft.text.predict_words(model, ["Alice moved to Paris"])
# [["B-PER", "O", "O", "B-LOC"]]
```
"""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kft.data.token_labels import IGNORED_LABEL
from kft.errors import KftError
from kft.evaluation.entities import EntityF1
from kft.evaluation.entities import check_tag_layout
from kft.models import dynamic_padding
from kft.models.weights import text_presets



@keras.saving.register_keras_serializable(package="kft")
class TokenClassifierPreprocessor(keras_hub.models.Preprocessor):
    """Turns sentences and word labels into packed wordpieces and piece labels.

    Args:
        tokenizer: a keras-hub `WordPieceTokenizer` (e.g. `BertTokenizer`)
            with start, end and padding tokens.
        sequence_length: pieces per example, `[CLS]` and `[SEP]` included;
            words past it are cut off (they get no prediction).
        segment_ids: also output all-zero `segment_ids` (BERT takes them).
        pad_to_multiple_of: pad each batch to its longest sentence, rounded
            up to a multiple of this (the same outputs for less compute, see
            `kft.models.dynamic_padding`); `None` pads to `sequence_length`.

    Call arguments:
        x: sentences: a string, a batch of strings (split on whitespace), or
            a ragged batch of words (`tf.RaggedTensor` of strings).
        y: optional word label ids, `[batch, words]`, dense with `-1` for
            words without a label (and as padding) or ragged.
        sample_weight: optional per-sentence weights `[batch]`, spread over
            each sentence's positions.

    Returns:
        `x` alone, or `(x, piece_labels)` (and weights) when `y` is given:
        `x` is a dict of int32 `token_ids`, `padding_mask` (and
        `segment_ids`), `[batch, width]` (the batch's longest, rounded up, or
        `sequence_length`); each word's label sits on
        its first piece, every other position holds -1.

    Example:
    ```python
    preprocessor = TokenClassifierPreprocessor(tokenizer, sequence_length=8)
    x, y = preprocessor(["Alice lives in Paris"], [[1, 0, 0, 3]])
    ```
    """

    def __init__(self, tokenizer, sequence_length=128, segment_ids=True,
                 pad_to_multiple_of=dynamic_padding.PAD_TO_MULTIPLE_OF, **kwargs):
        super().__init__(**kwargs)
        self.tokenizer = tokenizer
        self.sequence_length = int(sequence_length)
        self.segment_ids = bool(segment_ids)
        self.pad_to_multiple_of = None if pad_to_multiple_of is None else int(pad_to_multiple_of)
        if self.sequence_length < 3:
            raise KftError(f"sequence_length must be at least 3, got {sequence_length}.")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise KftError(f"pad_to_multiple_of must be at least 1, got {pad_to_multiple_of}.")
        self._traced = {}

    def call(self, x, y=None, sample_weight=None):
        features, labels, _ = self.align(x, y)
        if y is None:
            return features
        if sample_weight is not None:
            sample_weight = tf.broadcast_to(
                tf.reshape(tf.cast(sample_weight, "float32"), [-1, 1]), tf.shape(labels))
        return keras.utils.pack_x_y_sample_weight(features, labels, sample_weight)

    def align(self, x, y=None):
        """Packs `x` and says which word each position's label belongs to.

        Args:
            x: sentences, as for `call`.
            y: optional word label ids, as for `call`.

        Returns:
            `(features, piece_labels, word_positions)`: the model's inputs;
            the label of each position (`-1` where none, `None` without `y`);
            and each position's word number in its sentence, on the word's
            first piece only (`-1` elsewhere).
        """
        x, y = _as_tensor(x), _labels_tensor(y)
        if not tf.executing_eagerly():
            return self._align(x, y)
        # Eager calls run a traced function: keras-hub tokenizers take a pure
        # Python path when eager, and the alignment is written for the
        # TensorFlow one. Tracing the tokenizer costs seconds, so the common
        # inputs (a batch of sentence strings, with or without labels) get
        # one trace for every batch size.
        key = (isinstance(x, tf.RaggedTensor) or x.shape.rank != 1, y is None)
        if key not in self._traced:
            if key[0]:
                function = tf.function(self._align, reduce_retracing=True)
            elif key[1]:
                function = tf.function(lambda x: self._align(x, None),
                                       input_signature=[tf.TensorSpec([None], tf.string)])
            else:
                function = tf.function(self._align, input_signature=[
                    tf.TensorSpec([None], tf.string), tf.TensorSpec([None, None], tf.int32)])
            self._traced[key] = function
        return self._traced[key](x) if key == (False, True) else self._traced[key](x, y)

    def _align(self, x, y):
        words = _split_words(x)
        pieces = self.tokenizer(words)  # [batch, words, pieces]
        pieces = pieces.with_values(self._unknown_if_empty(pieces.values))
        tokens = pieces.merge_dims(1, 2)  # [batch, pieces of the sentence]

        word_pieces = pieces.values  # [all words, pieces]
        word_number = tf.ragged.range(pieces.row_lengths()).values
        piece_word = tf.gather(word_number, word_pieces.value_rowids())
        first = tf.ragged.range(word_pieces.row_lengths()).values == 0
        positions = tokens.with_flat_values(tf.where(first, piece_word, IGNORED_LABEL))

        token_ids, padding_mask = self._pack(
            tokens, self.tokenizer.start_token_id, self.tokenizer.end_token_id,
            self.tokenizer.pad_token_id,
        )
        features = {"token_ids": token_ids, "padding_mask": padding_mask}
        if self.segment_ids:
            features["segment_ids"] = tf.zeros_like(token_ids)
        word_positions, _ = self._pack(positions, IGNORED_LABEL, IGNORED_LABEL, IGNORED_LABEL)
        if y is None:
            return features, None, word_positions
        sentence = tf.cast(tokens.value_rowids(), piece_word.dtype)
        word_labels = tf.gather_nd(y, tf.stack([sentence, piece_word], axis=1))
        piece_labels = tokens.with_flat_values(
            tf.where(first, tf.cast(word_labels, "int32"), IGNORED_LABEL)
        )
        labels, _ = self._pack(piece_labels, IGNORED_LABEL, IGNORED_LABEL, IGNORED_LABEL)
        return features, labels, word_positions

    def _unknown_if_empty(self, word_pieces):
        """Gives a word the tokenizer drops (e.g. a lone control character)
        the unknown token, so every word keeps a position and a label."""
        empty = tf.cast(word_pieces.row_lengths() == 0, "int64")
        unknown = tf.fill([tf.reduce_sum(empty)], tf.cast(self._unknown_id(), word_pieces.dtype))
        return tf.concat([word_pieces, tf.RaggedTensor.from_row_lengths(unknown, empty)], axis=1)

    def _unknown_id(self):
        unknown = getattr(self.tokenizer, "oov_token", None) or "[UNK]"
        return self.tokenizer.token_to_id(unknown)

    def _pack(self, ragged, start, end, pad):
        """`[start] + row[:sequence_length - 2] + [end]`, padded (to the batch's
        longest row, rounded up, with `pad_to_multiple_of`); and the mask."""
        ragged = tf.cast(ragged, "int32")[:, : self.sequence_length - 2]
        rows = ragged.nrows()
        ragged = tf.concat(
            [tf.fill([rows, 1], start), ragged, tf.fill([rows, 1], end)], axis=1
        )
        shape = [None, self.sequence_length]
        packed = ragged.to_tensor(default_value=pad, shape=shape)
        mask = tf.ones_like(ragged, dtype="bool").to_tensor(default_value=False, shape=shape)
        if self.pad_to_multiple_of is not None:
            # Tokens, positions and labels share row lengths: one width for all.
            width = dynamic_padding.padded_length(ragged.row_lengths(), self.sequence_length,
                                                  self.pad_to_multiple_of)
            packed, mask = packed[:, :width], mask[:, :width]
        return packed, mask

    def get_config(self):
        config = super().get_config()
        config.update({"sequence_length": self.sequence_length, "segment_ids": self.segment_ids,
                       "pad_to_multiple_of": self.pad_to_multiple_of})
        return config


def _as_tensor(x):
    if isinstance(x, (tf.Tensor, tf.RaggedTensor)):
        return x
    if isinstance(x, str):
        return tf.constant([x])
    x = list(x) if not isinstance(x, np.ndarray) else x
    if len(x) and not isinstance(x[0], (str, bytes)):  # Lists of words.
        return tf.ragged.constant([list(words) for words in x], dtype=tf.string)
    return tf.constant(x, dtype=tf.string)


def _labels_tensor(y):
    if y is None:
        return None
    if isinstance(y, tf.RaggedTensor):
        return y.to_tensor(default_value=IGNORED_LABEL)
    if isinstance(y, tf.Tensor):
        return tf.cast(y, "int32")
    try:
        return tf.ragged.constant(y, dtype="int32").to_tensor(default_value=IGNORED_LABEL)
    except (ValueError, TypeError):
        return tf.constant(y, dtype="int32")


def _split_words(x):
    """A ragged `[batch, words]` batch of words from sentences or word lists."""
    if isinstance(x, tf.RaggedTensor):
        return x
    if x.shape.rank == 0:
        x = x[tf.newaxis]
    if x.shape.rank == 2:  # A dense batch of word lists, padded with "".
        return tf.ragged.boolean_mask(x, x != "")
    return tf.strings.split(x)


@keras.saving.register_keras_serializable(package="kft")
class TokenClassifier(keras_hub.models.Task):
    """Tags every word of a sentence: a keras-hub encoder and a per-piece head.

    The head (`head_dropout`, `head_dense`, `head_softmax`) maps each
    piece's encoding to tag probabilities; `kft.layer_groups` puts it last
    as `head`. Training data is sentences with word label ids (see
    `kft.data.token_labels`); the preprocessor aligns them to pieces and
    labels every other position -1. Compile with a loss that skips -1
    (`SparseCategoricalCrossentropy(ignore_class=-1)`, the default) and
    `kft.evaluation.entities.EntityF1`; Keras' `"accuracy"` would count the -1
    positions as errors.

    Args:
        backbone: a keras-hub text backbone whose output is the sequence of
            piece encodings (or a dict with `"sequence_output"`).
        tags: the tag names in kft's layout: `["O", "B-T1", "I-T1", ...]`
            (see `kft.data.token_labels.tag_names`).
        preprocessor: a `TokenClassifierPreprocessor`, or `None` to feed
            packed features yourself.
        dropout: dropout rate before the head's dense layer.
        compile: compile with `compile()`'s defaults on construction.
    """

    def __init__(self, backbone, tags, preprocessor=None, dropout=0.1, **kwargs):
        tags = [str(tag) for tag in tags]
        check_tag_layout(tags)
        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.head_dropout = keras.layers.Dropout(dropout, name="head_dropout")
        self.head_dense = keras.layers.Dense(
            len(tags), name="head_dense", dtype=backbone.dtype_policy,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        # Probabilities in float32 even under mixed precision.
        self.head_softmax = keras.layers.Softmax(dtype="float32", name="head_softmax")
        # === Functional model ===
        inputs = backbone.input
        encoded = backbone(inputs)
        if isinstance(encoded, dict):
            encoded = encoded["sequence_output"]
        outputs = self.head_softmax(self.head_dense(self.head_dropout(encoded)))
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        # === Config ===
        self.tags = tags
        self.dropout = dropout

    def compile(self, optimizer="auto", loss="auto", *, metrics="auto", **kwargs):
        """Compiles with token classification's defaults for `"auto"`.

        Args:
            optimizer: `"auto"` is Adam at 5e-5.
            loss: `"auto"` is sparse categorical cross-entropy averaged over
                the words (positions labelled -1 are skipped).
            metrics: `"auto"` is `[kft.evaluation.entities.EntityF1()]`.
            **kwargs: as for `keras.Model.compile`.
        """
        if optimizer == "auto":
            optimizer = keras.optimizers.Adam(5e-5)
        if loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(ignore_class=IGNORED_LABEL)
        if metrics == "auto":
            metrics = [EntityF1()]
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics, **kwargs)

    def compile_from_config(self, config):
        # Keras skips this for models that override `compile`; without it a
        # reloaded checkpoint has no optimizer and cannot resume training.
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def get_config(self):
        config = super().get_config()
        config.update({"tags": list(self.tags), "dropout": self.dropout})
        return config


def token_classifier(preset_or_dir, tags, sequence_length=128, dropout=0.1, name="token_classifier"):
    """Builds a `TokenClassifier` from a keras-hub WordPiece encoder preset.

    Args:
        preset_or_dir: a keras-hub preset name, a local preset or Hugging
            Face checkpoint folder, or a kft short name (`"minilm"`).
        tags: the tag names in kft's layout (`data.class_names` of
            `kft.data.token_labels.load`).
        sequence_length: wordpieces per sentence, `[CLS]` and `[SEP]`
            included; words past it get no prediction.
        dropout: dropout before the head.
        name: the model's name.

    Returns:
        A `TokenClassifier` that takes raw sentences in `fit`, `evaluate`
        and `predict`.

    Raises:
        KftError: the tags are not in kft's layout, the preset's tokenizer is
            not WordPiece, or `sequence_length` is longer than the backbone takes.

    Example:
    ```python
    model = kft.text.token_classifier("minilm", ["O", "B-PER", "I-PER"])
    ```
    """
    path = text_presets.resolve(preset_or_dir)
    backbone = keras_hub.models.Backbone.from_preset(path)
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(path)
    if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
        raise KftError(
            f"token_classifier needs a WordPiece tokenizer (BERT family); {preset_or_dir} "
            f"has a {type(tokenizer).__name__}."
        )
    limit = getattr(backbone, "max_sequence_length", None)
    if limit is not None and sequence_length > limit:
        raise KftError(
            f"sequence_length={sequence_length} is longer than {preset_or_dir} takes ({limit})."
        )
    preprocessor = TokenClassifierPreprocessor(
        tokenizer, sequence_length=sequence_length,
        segment_ids="segment_ids" in backbone.input,
    )
    return TokenClassifier(backbone, tags, preprocessor=preprocessor, dropout=dropout, name=name)


def predict_words(model, sentences, batch_size=32):
    """Tags each word of each sentence with a trained `TokenClassifier`.

    Args:
        model: a `TokenClassifier` with its preprocessor (a reloaded `.keras`
            file works as is).
        sentences: raw strings (split on whitespace) or lists of words.
        batch_size: sentences per forward pass.

    Returns:
        One list of tag names per sentence, one tag per word. Words past the
        preprocessor's `sequence_length` get `"O"`.

    Example:
    ```python
    kft.text.predict_words(model, ["Alice lives in Paris", ["Bob", "works"]])
    # [["B-PER", "O", "O", "B-LOC"], ["B-PER", "O"]]
    ```
    """
    if getattr(model, "preprocessor", None) is None or not hasattr(model, "tags"):
        raise KftError("predict_words needs a TokenClassifier with its preprocessor.")
    if isinstance(sentences, str):
        raise KftError("predict_words takes a list of sentences; wrap a single one in a list.")
    texts = [s if isinstance(s, str) else " ".join(_check_words(s)) for s in sentences]
    if not texts:
        return []
    tags = np.array(model.tags, dtype=object)
    results = []
    for begin in range(0, len(texts), batch_size):
        batch = texts[begin: begin + batch_size]
        features, _, positions = model.preprocessor.align(tf.constant(batch))
        # keras.Model's own predict_on_batch: the features are already
        # preprocessed, and it runs one compiled function instead of the
        # layers one op at a time. Batches differ in width (each is padded to
        # its longest sentence), so each is read on its own.
        predicted = np.argmax(keras.Model.predict_on_batch(model, features), axis=-1)
        for text, row_positions, row_predicted in zip(batch, positions.numpy(), predicted):
            words = np.full(len(text.split()), "O", dtype=object)
            tagged = row_positions >= 0
            words[row_positions[tagged]] = tags[row_predicted[tagged]]
            results.append(list(words))
    return results


def _check_words(words):
    words = [str(word) for word in words]
    for word in words:
        if not word or word.split() != [word]:
            raise KftError(
                f"Word {word!r} is empty or holds whitespace; give words without spaces "
                "or the raw sentence string."
            )
    return words
