"""llama.cpp's GGUF files as keras-hub causal language models.

A GGUF file holds a model's architecture and tokenizer as metadata and its
weights as (often quantized) tensors. kft reads it with the PyPI `gguf`
package (the `llm` extra), dequantizes every tensor to float32 and maps it
onto a keras-hub architecture; the tokenizer becomes a
`ChatBytePairTokenizer` that keeps the chat template and the turn tokens.
`kft.text.causal_lm("model.gguf")` is the entry point and
`loader.load_causal_lm` does the work: `reader` (the file), `llama` (tensor
mapping), `tokenizer` and `preprocessor`. The architectures kft maps are
`loader.ARCHITECTURES`.
"""
