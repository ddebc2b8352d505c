"""GGUF `llama` files (Llama 1/2, Mistral, SmolLM, TinyLlama, ...) onto keras-hub's Llama.

llama.cpp names tensors `token_embd`, `blk.N.attn_q`, ... and stores each
projection as (output features, input features), like PyTorch; keras-hub's
`LlamaBackbone` holds the same weights as Keras kernels (inputs first, heads
split out). One difference is not a transpose: llama.cpp's converter
permutes the rows of the query and key projections so that its rotary
embedding can rotate adjacent pairs (x0, x1), (x2, x3), ... of each head
(Meta's original layout), while keras-hub, like Hugging Face, rotates the two
halves of the head against each other (x0, x(d/2)), (x1, x(d/2+1)), ...
`unpermute_rotary` undoes that permutation; without it the model still runs
but every attention score is wrong, and it writes nonsense.
"""

import numpy as np

from kft.errors import KftError

# The metadata that fixes the architecture, by keras-hub argument.
_REQUIRED = {
    "num_layers": "block_count",
    "hidden_dim": "embedding_length",
    "intermediate_dim": "feed_forward_length",
    "num_query_heads": "attention.head_count",
}


def backbone_config(file):
    """keras-hub `LlamaBackbone` arguments from a GGUF file's metadata.

    Args:
        file: a `kft.models.gguf.reader.GGUFFile` whose architecture is
            `"llama"`.

    Returns:
        A dict for `keras_hub.models.LlamaBackbone(**config)`.

    Raises:
        KftError: the metadata describe a variant keras-hub's Llama cannot
            express (mixture of experts, a rotary dimension other than the
            head size, YaRN or Llama 3 frequency scaling).
    """
    arch = file.architecture
    config = {name: int(file.require(f"{arch}.{key}")) for name, key in _REQUIRED.items()}
    heads = config["num_query_heads"]
    config["num_key_value_heads"] = int(file.get(f"{arch}.attention.head_count_kv", heads))
    config["vocabulary_size"] = _vocabulary_size(file)
    config["rope_max_wavelength"] = float(file.get(f"{arch}.rope.freq_base", 10000.0))
    config["layer_norm_epsilon"] = float(file.require(f"{arch}.attention.layer_norm_rms_epsilon"))
    # llama.cpp writes output.weight only when the output projection is not the
    # embedding matrix (SmolLM2 ties them, Llama 2 does not).
    config["tie_word_embeddings"] = not file.has_tensor("output.weight")

    head_dim = config["hidden_dim"] // heads
    problems = []
    if file.get(f"{arch}.expert_count", 0):
        problems.append(f"it is a mixture of {file.get(f'{arch}.expert_count')} experts")
    if config["hidden_dim"] % heads:
        problems.append(f"hidden size {config['hidden_dim']} is not a multiple of {heads} heads")
    if heads % config["num_key_value_heads"]:
        problems.append(f"{heads} query heads do not share {config['num_key_value_heads']} "
                        "key/value heads evenly")
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        value = file.get(f"{arch}.{key}")
        if value is not None and int(value) != head_dim:
            problems.append(f"{key} is {value}, not the head size {head_dim}")
    scaling = file.get(f"{arch}.rope.scaling.type", "none")
    if scaling == "linear":
        config["rope_position_scaling_factor"] = float(file.require(f"{arch}.rope.scaling.factor"))
    elif scaling != "none":
        problems.append(f"its rotary embedding uses {scaling!r} scaling")
    if file.has_tensor("rope_freqs.weight"):
        problems.append("its rotary embedding has per-frequency factors (rope_freqs, Llama 3.1+)")
    if problems:
        raise KftError(
            f"{file.path} is a {arch} variant kft cannot map onto keras-hub's Llama: "
            + "; ".join(problems) + "."
        )
    return config


def load_weights(backbone, file):
    """Copies every tensor of a GGUF `llama` file into a `LlamaBackbone`.

    Args:
        backbone: a `keras_hub.models.LlamaBackbone` built from
            `backbone_config(file)`.
        file: the `GGUFFile`.

    Raises:
        KftError: a tensor is missing or has the wrong shape, or the file
            holds tensors this mapping does not place (biases, extra norms):
            such a model would load without them and compute something else.
    """
    hidden, heads = backbone.hidden_dim, backbone.num_query_heads
    kv_heads, head_dim = backbone.num_key_value_heads, backbone.hidden_dim // heads
    used = set()

    def tensor(name, shape):
        used.add(name)
        return file.tensor(name, shape)

    embedding = backbone.get_layer("token_embedding")
    embedding.embeddings.assign(tensor("token_embd.weight", (backbone.vocabulary_size, hidden)))
    if not backbone.tie_word_embeddings:
        embedding.reverse_embeddings.assign(
            tensor("output.weight", (backbone.vocabulary_size, hidden)).T)
    backbone.get_layer("sequence_output_layernorm").scale.assign(
        tensor("output_norm.weight", (hidden,)))

    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attention = block._self_attention_layer
        prefix = f"blk.{i}."
        block._self_attention_layernorm.scale.assign(tensor(prefix + "attn_norm.weight", (hidden,)))
        block._feedforward_layernorm.scale.assign(tensor(prefix + "ffn_norm.weight", (hidden,)))
        query = unpermute_rotary(tensor(prefix + "attn_q.weight", (heads * head_dim, hidden)), heads)
        key = unpermute_rotary(tensor(prefix + "attn_k.weight", (kv_heads * head_dim, hidden)),
                               kv_heads)
        value = tensor(prefix + "attn_v.weight", (kv_heads * head_dim, hidden))
        # (heads * head_dim, hidden) -> Keras' (hidden, heads, head_dim).
        attention._query_dense.kernel.assign(query.T.reshape(hidden, heads, head_dim))
        attention._key_dense.kernel.assign(key.T.reshape(hidden, kv_heads, head_dim))
        attention._value_dense.kernel.assign(value.T.reshape(hidden, kv_heads, head_dim))
        output = tensor(prefix + "attn_output.weight", (hidden, heads * head_dim))
        attention._output_dense.kernel.assign(output.T.reshape(heads, head_dim, hidden))
        intermediate = backbone.intermediate_dim
        block._feedforward_gate_dense.kernel.assign(
            tensor(prefix + "ffn_gate.weight", (intermediate, hidden)).T)
        block._feedforward_intermediate_dense.kernel.assign(
            tensor(prefix + "ffn_up.weight", (intermediate, hidden)).T)
        block._feedforward_output_dense.kernel.assign(
            tensor(prefix + "ffn_down.weight", (hidden, intermediate)).T)

    unused = [name for name in file.tensor_names if name not in used]
    if unused:
        shown = ", ".join(unused[:5]) + (f" and {len(unused) - 5} more" if len(unused) > 5 else "")
        raise KftError(
            f"{file.path} holds tensors kft's llama mapping does not place ({shown}): it is a "
            "variant keras-hub's Llama cannot compute, and loading it without them would "
            "give a different model."
        )


def unpermute_rotary(weight, num_heads):
    """Undoes llama.cpp's rotary row permutation of a query or key projection.

    llama.cpp's `convert_hf_to_gguf.py` turns Hugging Face's rows, per head
    `[first half | second half]`, into interleaved pairs with
    `w.reshape(heads, 2, d / 2, -1).swapaxes(1, 2)`; this is the inverse.

    Args:
        weight: the projection as stored, (heads * head_dim, hidden).
        num_heads: query heads for the query projection, key/value heads for
            the key projection.

    Returns:
        The projection in Hugging Face / keras-hub row order, same shape.

    Example:
    ```python
    query = unpermute_rotary(file.tensor("blk.0.attn_q.weight"), num_heads=9)
    ```
    """
    rows = weight.shape[0]
    pairs = rows // num_heads // 2
    return np.ascontiguousarray(
        weight.reshape(num_heads, pairs, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _vocabulary_size(file):
    arch = file.architecture
    size = file.get(f"{arch}.vocab_size")
    if size is None:
        tokens = file.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise KftError(f"{file.path} has neither {arch}.vocab_size nor a token list.")
        size = len(tokens)
    return int(size)
