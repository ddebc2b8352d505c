"""Mends for keras-hub defects that break kft's causal language models.

keras-hub 0.32's `LlamaBackbone.get_config` leaves out `tie_word_embeddings`
(Qwen's and others' keep it). A tied Llama (SmolLM2, from a GGUF file or a
Hugging Face folder through `Llama3Backbone`) therefore saves a config that
rebuilds untied, and loading its `.keras` file or preset fails: "Layer
'token_embedding' expected 2 variables, but received 0". The mend adds the
key when the config lacks it; the constructor has always accepted it, so the
saved files then load in plain keras-hub too, without kft.
"""

import functools


@functools.cache
def mend_llama_backbone_config():
    """Makes `LlamaBackbone.get_config` (and its subclasses') keep `tie_word_embeddings`.

    Applied once per process, by `kft.text.causal_lm` before it builds a
    model. Where keras-hub already saves the key (a fixed version), the
    mend changes nothing.

    Returns:
        `True`.
    """
    from keras_hub.src.models.llama.llama_backbone import LlamaBackbone

    stock_get_config = LlamaBackbone.get_config

    def get_config(self):
        config = stock_get_config(self)
        config.setdefault("tie_word_embeddings", self.tie_word_embeddings)
        return config

    get_config.__doc__ = stock_get_config.__doc__
    LlamaBackbone.get_config = get_config
    return True
