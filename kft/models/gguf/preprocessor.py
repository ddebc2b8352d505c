"""The causal-LM preprocessor for models whose tokenizer came from a GGUF file."""

import keras
import keras_hub

from kft.models.gguf.tokenizer import ChatBytePairTokenizer


@keras.saving.register_keras_serializable(package="kft")
class ChatCausalLMPreprocessor(keras_hub.models.CausalLMPreprocessor):
    """keras-hub's causal-LM packing around a `ChatBytePairTokenizer`.

    Training calls (`fit`) turn strings into `(token_ids, padding_mask)` with
    next-token labels; `generate` packs prompts and detokenizes, removing
    the special tokens. It adds nothing to keras-hub's `CausalLMPreprocessor`
    but the tokenizer class (keras-hub pairs each preprocessor with one), the
    chat template, read through, and one fix: `generate` prompts get the
    start token only if `add_start_token` says so.

    Args:
        tokenizer: a `ChatBytePairTokenizer`.
        sequence_length: tokens per packed sequence.
        add_start_token: put the tokenizer's start token first (SmolLM2's
            GGUF says no: `tokenizer.ggml.add_bos_token` is false).
        add_end_token: append the end token to training texts.

    Example:
    ```python
    model = kft.text.causal_lm("smollm2-135m-instruct", sequence_length=128)
    model.preprocessor.chat_template  # the Jinja template from the GGUF file
    x, y, weights = model.preprocessor(["The capital of France is Paris."])
    ```
    """

    backbone_cls = keras_hub.models.LlamaBackbone
    tokenizer_cls = ChatBytePairTokenizer

    def __init__(self, tokenizer, sequence_length=1024, add_start_token=False,
                 add_end_token=True, **kwargs):
        super().__init__(tokenizer, sequence_length=sequence_length,
                         add_start_token=add_start_token, add_end_token=add_end_token, **kwargs)

    def _generate_preprocess_python(self, x, sequence_length=None):
        # keras-hub's version always prepends the start token, whatever
        # `add_start_token` says; a SmolLM2 prompt already begins with
        # `<|im_start|>`, and a second one in front derails the answer.
        if not self.built:
            self.build(None)
        token_ids, padding_mask = self.packer(
            self.tokenizer(x), sequence_length=sequence_length,
            add_start_value=self.add_start_token, add_end_value=False,
        )
        return {"token_ids": token_ids, "padding_mask": padding_mask}

    @property
    def chat_template(self):
        """The tokenizer's chat template (a Jinja string), or `None`."""
        return getattr(self.tokenizer, "chat_template", None)
