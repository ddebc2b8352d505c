"""Domain vocabulary: new single tokens for a keras-hub text model.

A pretrained tokenizer cuts domain words into pieces (`"phosphorylation"` ->
`phos ##ph ##ory ##lation`) and marker strings into punctuation and words
(`"[PROTEIN]"` -> `[ protein ]`). `add_tokens` makes each of them one token:
it appends them to the tokenizer's vocabulary, grows the backbone's token
embedding matrix by one row per token, and starts each new row from the mean
of the existing rows or of the word's old pieces. Everything else is left as
it was, so texts without the new tokens give the same outputs as before.
"""

import keras
import numpy as np

from kft.errors import KftError
from kft.model_tree import reset_compiled_functions

INITIALISATIONS = ("mean", "pieces")

# Marker tokens such as "[PROTEIN]" or "<code>": their old pieces are
# punctuation plus a word, not the token's meaning, so "pieces" uses the mean.
_MARKER_BRACKETS = {"[": "]", "<": ">", "{": "}", "(": ")"}


def add_tokens(model, tokens, init="mean"):
    """Adds `tokens` to a keras-hub text task's vocabulary as single tokens.

    Works in place on a task whose preprocessor has a WordPiece tokenizer
    (the BERT family: `keras_hub.models.BertTextClassifier`,
    `DistilBertTextClassifier`, ...). Call it before the first `fit`, compiled
    or not; the new embedding rows train whenever the token embedding does.

    How each token becomes one token:

    * A plain word the tokenizer keeps whole (`"kinase"`) is appended to the
      vocabulary; WordPiece's longest-match then picks it over the old pieces,
      also at the start of longer words (`"kinases"` -> `kinase ##s`).
    * A token the tokenizer would split on punctuation or whitespace
      (`"[PROTEIN]"`, `"IL-6"`) becomes a special token: the tokenizer matches
      it in input strings, case-sensitively, before splitting and
      lowercasing. This turns on keras-hub's `special_tokens_in_strings`, so
      the tokenizer's own special tokens written literally in a text
      (`"[CLS]"`, `"[SEP]"`) also map to their ids from then on.

    The embedding matrix grows by `len(tokens)` rows; the old rows stay
    bit-identical and the backbone's `vocabulary_size` is updated, so a saved
    `.keras` model reloads with the new vocabulary and matrix.

    Args:
        model: a keras-hub task (`keras_hub.models.Task`) with its
            preprocessor attached and a backbone with a `token_embedding`.
        tokens: a token or a list of tokens not yet in the vocabulary. A plain
            word must be given as the tokenizer sees it (lowercase for an
            uncased model).
        init: how new rows start. `"mean"`: the mean of all existing rows.
            `"pieces"`: the mean of the rows of the pieces the tokenizer cut
            the token into before; marker tokens wrapped in brackets
            (`"[PROTEIN]"`, `"<code>"`) and tokens with an unknown piece use
            the mean of all rows instead.

    Returns:
        A dict from each new token to its id.

    Raises:
        KftError: the model has no WordPiece tokenizer, or no tied, unquantized
            token embedding matching it; its optimizer already holds state for
            the old matrix; a token is already in the vocabulary, repeated,
            empty, a `##` suffix piece, or would never match because the
            tokenizer lowercases or strips accents first; `init` is unknown.
            Nothing is changed when it raises.

    Example:
    ```python
    model = kft.text.text_classifier("minilm", num_classes=2)
    ids = kft.text.add_tokens(model, ["[PROTEIN]", "phosphorylation"], init="pieces")
    model.preprocessor.tokenizer("[PROTEIN] phosphorylation")  # [30522, 30523]
    ```
    """
    if init not in INITIALISATIONS:
        raise KftError(f"add_tokens: init={init!r} is unknown; use one of {INITIALISATIONS}.")
    tokenizer = _word_piece_tokenizer(model)
    embedding = _token_embedding(model, tokenizer)
    _check_optimizer_not_built(model)
    tokens = [tokens] if isinstance(tokens, str) else list(tokens)
    _check_new(tokenizer, tokens)
    special = [_is_special(tokenizer, token) for token in tokens]

    old_size = tokenizer.vocabulary_size()
    pieces = [_old_pieces(tokenizer, token, init) for token in tokens]
    _grow_embedding(embedding, pieces)

    specials = list(tokenizer._init_special_tokens or [])
    specials += [token for token, is_special in zip(tokens, special) if is_special]
    if len(specials) > len(tokenizer._init_special_tokens or []):
        # The split pattern tries the alternatives in order: longest first so
        # "IL-6R" is not cut after the shorter token "IL-6".
        tokenizer._init_special_tokens = sorted(specials, key=len, reverse=True)
        tokenizer.special_tokens_in_strings = True
    tokenizer.set_vocabulary(tokenizer.get_vocabulary() + tokens)
    model.backbone.vocabulary_size = embedding.input_dim
    reset_compiled_functions(model)
    return {token: old_size + index for index, token in enumerate(tokens)}


def _word_piece_tokenizer(model):
    import keras_hub

    preprocessor = getattr(model, "preprocessor", None)
    tokenizer = getattr(preprocessor, "tokenizer", None)
    if tokenizer is None:
        raise KftError(
            "add_tokens needs a keras-hub task with its preprocessor attached "
            "(e.g. BertTextClassifier.from_preset(...)); this model has no "
            "preprocessor.tokenizer."
        )
    if not isinstance(tokenizer, keras_hub.tokenizers.WordPieceTokenizer):
        raise KftError(
            f"add_tokens supports WordPiece tokenizers (the BERT family); this "
            f"model's tokenizer is a {type(tokenizer).__name__}."
        )
    return tokenizer


def _token_embedding(model, tokenizer):
    backbone = getattr(model, "backbone", None)
    embedding = getattr(backbone, "token_embedding", None)
    if not isinstance(embedding, keras.layers.Embedding) or not embedding.built:
        raise KftError(
            "add_tokens needs a built keras-hub backbone with a token_embedding "
            "layer; this model's backbone has none."
        )
    if embedding.quantization_mode or embedding.lora_enabled:
        raise KftError(
            "add_tokens cannot grow a quantized or LoRA-enabled token embedding; "
            "add the tokens before quantizing or applying LoRA."
        )
    if getattr(backbone, "vocabulary_size", None) != embedding.input_dim:
        # The backbone rebuilds its embedding from this on load.
        raise KftError(
            f"add_tokens needs a backbone that records its vocabulary_size; "
            f"{type(backbone).__name__} does not."
        )
    if not getattr(embedding, "tie_weights", True):
        raise KftError(
            "add_tokens supports token embeddings whose output projection is tied "
            "to them (keras-hub's default); this backbone has a separate one."
        )
    if embedding.input_dim != tokenizer.vocabulary_size():
        raise KftError(
            f"The token embedding has {embedding.input_dim} rows but the tokenizer "
            f"has {tokenizer.vocabulary_size()} tokens; add_tokens needs them equal."
        )
    return embedding


def _check_optimizer_not_built(model):
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and optimizer.built:
        # Its slots were made for the old matrix and cannot change shape.
        raise KftError(
            "add_tokens replaces the token embedding matrix, but the model's "
            "optimizer already holds state for the old one. Call add_tokens "
            "before training, or compile again with a new optimizer and then "
            "call add_tokens."
        )


def _check_new(tokenizer, tokens):
    if not tokens:
        raise KftError("add_tokens: give at least one token.")
    seen = set()
    for token in tokens:
        if not isinstance(token, str) or not token.strip():
            raise KftError(f"add_tokens: tokens must be non-empty strings; got {token!r}.")
        if token in seen:
            raise KftError(f"add_tokens: {token!r} is given twice.")
        seen.add(token)
        if token in tokenizer._token_to_id_map:
            raise KftError(
                f"add_tokens: {token!r} is already in the vocabulary (id "
                f"{tokenizer.token_to_id(token)}); leave it out."
            )
        if token.startswith(tokenizer.suffix_indicator):
            raise KftError(
                f"add_tokens: {token!r} is a WordPiece suffix piece; add whole "
                "words or marker tokens instead."
            )


def _is_special(tokenizer, token):
    """Whether `token` needs matching as a special token to stay whole."""
    # keras-hub is imported only where used: `import kft` stays fast.
    from keras_hub.src.tokenizers.word_piece_tokenizer import pretokenize_python

    words = pretokenize_python(
        token, tokenizer.lowercase, tokenizer.strip_accents, tokenizer.split,
        tokenizer.split_on_cjk,
    )
    if len(words) > 1:
        if tokenizer.strip_accents and pretokenize_python(token, split=False) != [token]:
            # Accents go before special tokens are matched: it would never match.
            raise KftError(
                f"add_tokens: the tokenizer strips accents before matching special "
                f"tokens, so {token!r} would never match; give it without accents."
            )
        return True
    if words != [token]:
        raise KftError(
            f"add_tokens: the tokenizer turns {token!r} into {words[0]!r} before "
            f"looking it up, so {token!r} would never match; add {words[0]!r}."
        )
    return False


def _old_pieces(tokenizer, token, init):
    """Ids of the rows a new token's row is the mean of; None for all rows."""
    if init == "mean" or _MARKER_BRACKETS.get(token[0]) == token[-1]:
        return None
    ids = keras.ops.convert_to_numpy(tokenizer.tokenize(token)).tolist()
    if tokenizer.sequence_length:
        ids = [i for i in ids if i != 0]  # padding
    unknown = tokenizer.token_to_id(tokenizer.oov_token)
    if not ids or unknown in ids:
        return None
    return ids


def _grow_embedding(embedding, pieces):
    """Appends one row per entry of `pieces` to `embedding`'s matrix.

    Keras variables cannot change shape, so the layer gets a new variable
    (same name, dtype, trainability) holding the old rows unchanged.
    """
    values = keras.ops.convert_to_numpy(embedding._embeddings)
    rows = np.stack([_initial_row(values, ids) for ids in pieces])
    _replace_variable(embedding, "_embeddings", np.concatenate([values, rows], axis=0))
    embedding.input_dim = values.shape[0] + len(pieces)


def _initial_row(matrix, ids):
    chosen = matrix if ids is None else matrix[ids]
    # float64: a float32 sum over 30k rows would lose digits of the mean.
    return chosen.astype("float64").mean(axis=0).astype(matrix.dtype)


def _replace_variable(layer, attribute, values):
    old = getattr(layer, attribute)
    layer._untrack_variable(old)
    was_locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        new = layer.add_weight(
            shape=values.shape, initializer="zeros", dtype=old.dtype, name=old.name,
            trainable=old.trainable, regularizer=old.regularizer, constraint=old.constraint,
        )
        setattr(layer, attribute, new)
    finally:
        if was_locked:
            layer._tracker.lock()
    new.assign(values)
