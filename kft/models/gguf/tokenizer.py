"""Byte-level BPE tokenizers that know their chat template and turn tokens.

GGUF files from GPT-2-style vocabularies (`tokenizer.ggml.model == "gpt2"`:
SmolLM, Qwen, Llama 3, ...) carry the tokens, the merges, the ids of the
begin, end, padding and end-of-turn tokens, the chat template (a Jinja
string) and the name of the pre-tokenizer, the rule that splits text into
words before the merges apply (`tokenizer.ggml.pre`). keras-hub's
`BytePairTokenizer` does the merging; `ChatBytePairTokenizer` adds what
keras-hub's model-specific tokenizers hard-code: which tokens are special,
the chat template, and the pre-tokenizer.

keras-hub tokenizes on two paths: eager calls (`generate`, `predict` on
strings) use Hugging Face's `tokenizers` library, and `tf.data` pipelines
(`fit`) use TensorFlow ops. kft sets the `tokenizers` path's pre-tokenizer to
the one the GGUF file names, so eager calls tokenize as the original model
did. The TensorFlow path is keras-hub's approximation of GPT-2's split: on
SmolLM2's vocabulary it gives the same tokens for words, digits,
punctuation and single spaces and newlines, but splits some runs of
whitespace differently (spaces at the very end of a text or before a digit,
`"\r\n"`), as it does for keras-hub's own GPT-2 and Qwen tokenizers.
"""

import keras
import keras_hub
from tokenizers import pre_tokenizers

from kft.errors import KftError

# `tokenizer.ggml.pre` -> the Hugging Face pre-tokenizer of the original model.
# None keeps keras-hub's own (Llama 3's pattern, as keras-hub's Llama3Tokenizer).
PRE_TOKENIZERS = {
    "gpt2": lambda prefix: pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True),
    # SmolLM: every digit is a word of its own, then GPT-2's pattern. SmolLM's
    # vocabulary has no multi-digit tokens, so the TensorFlow path's GPT-2
    # split agrees on digits (not on a run of spaces before one).
    "smollm": lambda prefix: pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=True),
    ]),
    "llama-bpe": None,
}

# gguf.TokenType: CONTROL and USER_DEFINED tokens are matched whole, never split.
_CONTROL, _USER_DEFINED = 3, 4


@keras.saving.register_keras_serializable(package="kft")
class ChatBytePairTokenizer(keras_hub.tokenizers.BytePairTokenizer):
    """A byte-level BPE tokenizer with its special tokens and chat template.

    Args:
        vocabulary: dict from token to id, or a `vocabulary.json` path.
        merges: list of merge rules (`"Ġ t"`), or a `merges.txt` path.
        end_token: the end-of-text token; `generate` stops on it.
        start_token: the begin-of-text token, or `None`.
        pad_token: the token packed sequences are padded with; never an
            end token (default: the vocabulary's first token that is not).
            Padding is masked out, so which token it is does not matter.
        end_of_turn_token: the token that ends an assistant turn in the chat
            format (default: `end_token`); `generate` stops on it too.
        chat_template: the model's chat template (a Jinja string, as in
            Hugging Face's `tokenizer_config.json`), or `None`.
        pre_tokenizer: a key of `PRE_TOKENIZERS`: how text is split into
            words before merging.
        **kwargs: for `BytePairTokenizer` (`unsplittable_tokens`: every
            control token, so they are never split; `add_prefix_space`).

    Example:
    ```python
    tokenizer = model.preprocessor.tokenizer  # from kft.text.causal_lm("x.gguf")
    tokenizer.chat_template           # '{% for message in messages %}...'
    tokenizer.end_of_turn_token_id    # 2 ('<|im_end|>' for SmolLM2)
    tokenizer.detokenize(tokenizer("Hello world"))  # 'Hello world'
    ```
    """

    def __init__(
        self,
        vocabulary=None,
        merges=None,
        end_token="<|endoftext|>",
        start_token=None,
        pad_token=None,
        end_of_turn_token=None,
        chat_template=None,
        pre_tokenizer="gpt2",
        **kwargs,
    ):
        if pre_tokenizer not in PRE_TOKENIZERS:
            raise KftError(
                f"Unknown pre-tokenizer {pre_tokenizer!r}; kft knows {', '.join(PRE_TOKENIZERS)}."
            )
        # Set before the parent's __init__, which builds the tokenizers and
        # resolves the special tokens' ids from the vocabulary.
        self.pre_tokenizer = pre_tokenizer
        self.chat_template = chat_template
        if start_token is None:
            self.start_token, self.start_token_id = None, None
        else:
            self._add_special_token(start_token, "start_token")
        end_of_turn_token = end_of_turn_token or end_token
        stops = (end_token, end_of_turn_token)
        if pad_token is None and isinstance(vocabulary, dict):
            pad_token = min((t for t in vocabulary if t not in stops), key=vocabulary.get,
                            default=None)
        if pad_token is None:
            raise KftError("Give ChatBytePairTokenizer a pad_token, or the vocabulary as a dict "
                           "to choose one from.")
        if pad_token in stops:
            # keras-hub's sampler stops once every row holds a stop token after
            # its prompt, and the unwritten positions hold padding: with
            # padding = end token, `generate` returns at once, empty.
            raise KftError(
                f"The padding token {pad_token!r} is also an end token; generation would "
                "stop before the first token. Pad with a token that never ends a text."
            )
        self._add_special_token(end_token, "end_token")
        self._add_special_token(pad_token, "pad_token")
        # keras-hub's CausalLM.generate also stops on `end_token2_id`.
        self._add_special_token(end_of_turn_token, "end_token2")
        super().__init__(vocabulary=vocabulary, merges=merges, **kwargs)

    @property
    def end_of_turn_token(self):
        """The token that ends an assistant turn (`end_token` if none)."""
        return self.end_token2

    @property
    def end_of_turn_token_id(self):
        """The id of `end_of_turn_token`."""
        return self.end_token2_id

    def _set_vocabulary_and_merges_tokenizers(self, vocabulary, merges):
        super()._set_vocabulary_and_merges_tokenizers(vocabulary, merges)
        make = PRE_TOKENIZERS[self.pre_tokenizer]
        if make is not None:
            self._tokenizer.pre_tokenizer = make(self.add_prefix_space)

    def get_config(self):
        config = super().get_config()
        config.update({
            "end_token": self.end_token,
            "start_token": self.start_token,
            "pad_token": self.pad_token,
            "end_of_turn_token": self.end_of_turn_token,
            "chat_template": self.chat_template,
            "pre_tokenizer": self.pre_tokenizer,
        })
        return config


def tokenizer_from_gguf(file):
    """Builds a `ChatBytePairTokenizer` from a GGUF file's tokenizer metadata.

    Args:
        file: a `kft.models.gguf.reader.GGUFFile`.

    Returns:
        `(tokenizer, add_start_token)`: the tokenizer, and whether the model
        expects its begin token before every text (`tokenizer.ggml.add_bos_token`).

    Raises:
        KftError: the tokenizer is not byte-level BPE (SentencePiece files say
            `"llama"`), its pre-tokenizer is unknown, or tokens are missing.

    Example:
    ```python
    tokenizer, add_start = tokenizer_from_gguf(GGUFFile("SmolLM2-135M-Instruct.Q4_1.gguf"))
    ```
    """
    model = file.require("tokenizer.ggml.model")
    if model != "gpt2":
        raise KftError(
            f"{file.path} has a {model!r} tokenizer; kft reads byte-level BPE tokenizers "
            "('gpt2': SmolLM, Qwen, Llama 3) from GGUF files. For a SentencePiece model use "
            "its Hugging Face checkpoint folder."
        )
    # Files from older converters name no pre-tokenizer ("default" to llama.cpp);
    # byte-level vocabularies then were GPT-2's split unless recorded otherwise.
    pre = file.get("tokenizer.ggml.pre", "default")
    if pre == "default":
        pre = "gpt2"
    if pre not in PRE_TOKENIZERS:
        raise KftError(
            f"{file.path} uses the pre-tokenizer {pre!r}, which kft does not reproduce; "
            f"it knows {', '.join(PRE_TOKENIZERS)}."
        )
    tokens = file.require("tokenizer.ggml.tokens")
    merges = file.require("tokenizer.ggml.merges")
    types = file.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocabulary = {}
    for index, token in enumerate(tokens):
        vocabulary.setdefault(token, index)  # A repeated token keeps its first id.
    control = [token for token, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)]

    def token(key, required=False):
        index = file.require(key) if required else file.get(key)
        if index is None:
            return None
        if not 0 <= int(index) < len(tokens):
            raise KftError(f"{file.path}: {key} is {index}, outside the {len(tokens)} tokens.")
        return tokens[int(index)]

    special = {
        "start_token": token("tokenizer.ggml.bos_token_id"),
        "end_token": token("tokenizer.ggml.eos_token_id", required=True),
        "pad_token": token("tokenizer.ggml.padding_token_id"),
        "end_of_turn_token": token("tokenizer.ggml.eot_token_id"),
    }
    if special["pad_token"] in (special["end_token"], special["end_of_turn_token"]):
        # SmolLM2 pads with its end token; keras-hub's generate cannot (see
        # ChatBytePairTokenizer), and padding is masked, so any other will do.
        special["pad_token"] = None
    # Unsplittable, or a special token written in a prompt would be cut into pieces.
    control += [t for t in special.values() if t is not None and t not in control]
    try:
        tokenizer = ChatBytePairTokenizer(
            vocabulary=vocabulary,
            merges=merges,
            chat_template=file.get("tokenizer.chat_template"),
            pre_tokenizer=pre,
            add_prefix_space=bool(file.get("tokenizer.ggml.add_space_prefix", False)),
            unsplittable_tokens=control,
            **special,
        )
    except ValueError as error:
        raise KftError(f"{file.path} has an inconsistent tokenizer: {error}") from None
    return tokenizer, bool(file.get("tokenizer.ggml.add_bos_token", False))
