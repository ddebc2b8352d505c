"""Tiny GGUF files written the way llama.cpp writes them, for fast GGUF tests.

`write_llama_gguf` takes a tiny random keras-hub `LlamaBackbone` and writes
it with `gguf.GGUFWriter` in llama.cpp's layout: PyTorch-order projections,
and the query/key rows permuted as llama.cpp's `convert_hf_to_gguf.py`
permutes them (`llama_cpp_permute`, copied from `LlamaModel.permute`). The
tokenizer is a byte-level BPE vocabulary: the 256 byte symbols, a few
control tokens and merges for a few words.
"""

import json
import pathlib

import numpy as np

CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", "Hello", "Ġworld", "ĠParis", "ĠĠĠ", "čĊ"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
)


def byte_level_vocabulary():
    """Returns `(tokens, merges, token_types)` of a small byte-level BPE vocabulary.

    Ids: the control tokens first (0, 1, 2, as in SmolLM2), then the 256
    GPT-2 byte symbols, then one token per merge.
    """
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    tokens = list(CONTROL_TOKENS) + bytes_to_unicode()[1]
    merges = []
    for word in WORDS:
        merged = word[0]
        for symbol in word[1:]:
            rule = f"{merged} {symbol}"
            merged += symbol
            if rule not in merges:
                merges.append(rule)
                if merged not in tokens:
                    tokens.append(merged)
    types = [3] * len(CONTROL_TOKENS) + [1] * (len(tokens) - len(CONTROL_TOKENS))
    return tokens, merges, types


def tiny_llama_backbone(seed=0, tie=True, hidden=32, heads=4, kv_heads=2, layers=2,
                        intermediate=64, rope_theta=500.0, epsilon=1e-5, vocabulary_size=None):
    """A keras-hub LlamaBackbone with every weight random (norm scales too)."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    size = vocabulary_size or len(byte_level_vocabulary()[0])
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=size, num_layers=layers, num_query_heads=heads, hidden_dim=hidden,
        intermediate_dim=intermediate, num_key_value_heads=kv_heads,
        rope_max_wavelength=rope_theta, layer_norm_epsilon=epsilon, tie_word_embeddings=tie,
    )
    rng = np.random.default_rng(seed)
    for variable in backbone.weights:
        shape = tuple(variable.shape)
        if "scale" in variable.path:
            variable.assign(1.0 + 0.2 * rng.standard_normal(shape).astype("float32"))
        else:
            variable.assign(0.3 * rng.standard_normal(shape).astype("float32"))
    return backbone


def llama_cpp_permute(weights, n_head, n_head_kv):
    """llama.cpp's `LlamaModel.permute` (convert_hf_to_gguf.py), in NumPy."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))


def hf_llama_tensors(backbone):
    """The backbone's weights under Hugging Face Llama names, in PyTorch layout."""
    hidden = backbone.hidden_dim
    tensors = {"model.embed_tokens.weight": _numpy(backbone.token_embedding.embeddings)}
    if not backbone.tie_word_embeddings:
        tensors["lm_head.weight"] = _numpy(backbone.token_embedding.reverse_embeddings).T
    tensors["model.norm.weight"] = _numpy(backbone.get_layer("sequence_output_layernorm").scale)
    for i in range(backbone.num_layers):
        block = backbone.get_layer(f"transformer_layer_{i}")
        attention = block._self_attention_layer
        prefix = f"model.layers.{i}."
        tensors[prefix + "input_layernorm.weight"] = _numpy(block._self_attention_layernorm.scale)
        tensors[prefix + "post_attention_layernorm.weight"] = _numpy(
            block._feedforward_layernorm.scale)
        for name, dense in (("q", attention._query_dense), ("k", attention._key_dense),
                            ("v", attention._value_dense)):
            tensors[prefix + f"self_attn.{name}_proj.weight"] = _numpy(dense.kernel).reshape(
                hidden, -1).T
        tensors[prefix + "self_attn.o_proj.weight"] = _numpy(
            attention._output_dense.kernel).reshape(-1, hidden).T
        tensors[prefix + "mlp.gate_proj.weight"] = _numpy(block._feedforward_gate_dense.kernel).T
        tensors[prefix + "mlp.up_proj.weight"] = _numpy(
            block._feedforward_intermediate_dense.kernel).T
        tensors[prefix + "mlp.down_proj.weight"] = _numpy(block._feedforward_output_dense.kernel).T
    return {name: np.ascontiguousarray(value, dtype="float32") for name, value in tensors.items()}


# Hugging Face Llama name -> GGUF name, as llama.cpp's tensor_mapping.py has it.
_GGUF_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "lm_head.weight": "output.weight",
    "model.norm.weight": "output_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_llama_tensors(backbone):
    """The backbone's weights as llama.cpp's converter writes them (Q/K permuted)."""
    heads, kv_heads = backbone.num_query_heads, backbone.num_key_value_heads
    tensors = {}
    for name, value in hf_llama_tensors(backbone).items():
        if name.startswith("model.layers."):
            _, _, index, rest = name.split(".", 3)
            gguf_name = f"blk.{index}.{_GGUF_NAMES[rest]}"
        else:
            gguf_name = _GGUF_NAMES[name]
        if name.endswith("q_proj.weight"):
            value = llama_cpp_permute(value, heads, heads)
        elif name.endswith("k_proj.weight"):
            value = llama_cpp_permute(value, heads, kv_heads)
        tensors[gguf_name] = np.ascontiguousarray(value)
    return tensors


def write_llama_gguf(path, backbone, qtype="F32", arch="llama", metadata=None, tensors=None,
                     tokenizer_model="gpt2", pre="smollm", skip=()):
    """Writes `backbone` (and the byte-level vocabulary) as a llama.cpp GGUF file.

    Args:
        path: the file to write.
        backbone: a `LlamaBackbone` (see `tiny_llama_backbone`).
        qtype: `"F32"`, `"F16"` or `"Q8_0"` for the 2-D tensors (norms stay
            F32, as llama.cpp keeps them).
        arch: `general.architecture`, and the prefix of the model keys.
        metadata: extra or replacing `{key: value}` fields (value types:
            str, bool, int as uint32, float as float32).
        tensors: replaces the tensors (`{gguf name: array}`), e.g. to add one.
        tokenizer_model, pre: `tokenizer.ggml.model` and `.pre`.
        skip: metadata keys to leave out.

    Returns:
        The path, as a string.
    """
    import gguf

    tokens, merges, types = byte_level_vocabulary()
    fields = {
        f"{arch}.block_count": backbone.num_layers,
        f"{arch}.context_length": 256,
        f"{arch}.embedding_length": backbone.hidden_dim,
        f"{arch}.feed_forward_length": backbone.intermediate_dim,
        f"{arch}.attention.head_count": backbone.num_query_heads,
        f"{arch}.attention.head_count_kv": backbone.num_key_value_heads,
        f"{arch}.rope.freq_base": float(backbone.rope_max_wavelength),
        f"{arch}.attention.layer_norm_rms_epsilon": float(backbone.layer_norm_epsilon),
        f"{arch}.rope.dimension_count": backbone.hidden_dim // backbone.num_query_heads,
        f"{arch}.vocab_size": backbone.vocabulary_size,
        "tokenizer.ggml.model": tokenizer_model,
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.padding_token_id": 2,  # As SmolLM2's file: padding = end.
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_space_prefix": False,
        "tokenizer.chat_template": CHAT_TEMPLATE,
    }
    fields.update(metadata or {})
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in fields.items():
        if key in skip:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        else:
            writer.add_float32(key, value)
    if "tokenizer.ggml.tokens" not in skip:
        writer.add_token_list(tokens)
        writer.add_token_types(types)
    writer.add_token_merges(merges)
    kind = gguf.GGMLQuantizationType[qtype]
    for name, value in (tensors if tensors is not None else gguf_llama_tensors(backbone)).items():
        if value.ndim == 1 or kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, value.astype("float32"))
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(name, value.astype("float16"))
        else:
            writer.add_tensor(name, gguf.quants.quantize(value, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def write_hf_llama_folder(folder, backbone):
    """Writes `backbone` as a Hugging Face Llama checkpoint folder (no permutation)."""
    from safetensors.numpy import save_file

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens, merges, _ = byte_level_vocabulary()
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": backbone.vocabulary_size, "num_hidden_layers": backbone.num_layers,
        "num_attention_heads": backbone.num_query_heads, "hidden_size": backbone.hidden_dim,
        "intermediate_size": backbone.intermediate_dim,
        "num_key_value_heads": backbone.num_key_value_heads,
        "tie_word_embeddings": backbone.tie_word_embeddings,
        "rope_theta": backbone.rope_max_wavelength, "rms_norm_eps": backbone.layer_norm_epsilon,
    }
    (folder / "config.json").write_text(json.dumps(config))
    save_file(hf_llama_tensors(backbone), str(folder / "model.safetensors"))
    vocabulary = {token: index for index, token in enumerate(tokens)}
    (folder / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": vocabulary, "merges": merges},
        "added_tokens": [{"id": i, "content": t, "special": True}
                         for i, t in enumerate(CONTROL_TOKENS)],
    }))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}))
    return str(folder)


def llama_cpp_logits(path, ids):
    """llama.cpp's forward pass (LLAMA_ROPE_TYPE_NORM) on a GGUF file's own tensors.

    Rotary embedding on adjacent pairs, the layout llama.cpp stores, on the
    weights as written (query and key rows permuted), in float64: a reference
    that shares nothing with keras-hub's code or with kft's un-permutation.

    Args:
        path: a `llama` GGUF file.
        ids: one sequence of token ids.

    Returns:
        The logits, (len(ids), vocabulary size).
    """
    from kft.models.gguf.reader import open_gguf

    file = open_gguf(path)
    get = lambda name: file.tensor(name).astype("float64")  # noqa: E731
    heads = file.get("llama.attention.head_count")
    kv_heads = file.get("llama.attention.head_count_kv")
    eps, base = file.get("llama.attention.layer_norm_rms_epsilon"), file.get("llama.rope.freq_base")
    embedding = get("token_embd.weight")
    x = embedding[ids]
    length, hidden = x.shape
    size = hidden // heads
    angles = np.arange(length)[:, None] * base ** (-np.arange(0, size, 2) / size)
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

    def rope(t):  # Rotates (t[2i], t[2i+1]) pairs: the layout llama.cpp stores.
        even, odd = t[..., 0::2], t[..., 1::2]
        out = np.empty_like(t)
        out[..., 0::2], out[..., 1::2] = even * cos - odd * sin, even * sin + odd * cos
        return out

    def rms(v, weight):
        return v / np.sqrt((v ** 2).mean(-1, keepdims=True) + eps) * weight

    causal = np.triu(np.full((length, length), -np.inf), 1)
    for i in range(file.get("llama.block_count")):
        h = rms(x, get(f"blk.{i}.attn_norm.weight"))
        q = rope((h @ get(f"blk.{i}.attn_q.weight").T).reshape(length, heads, size))
        k = rope((h @ get(f"blk.{i}.attn_k.weight").T).reshape(length, kv_heads, size))
        v = (h @ get(f"blk.{i}.attn_v.weight").T).reshape(length, kv_heads, size)
        k, v = np.repeat(k, heads // kv_heads, axis=1), np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(size) + causal
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        attended = np.einsum("hqk,khd->qhd", weights, v).reshape(length, hidden)
        x = x + attended @ get(f"blk.{i}.attn_output.weight").T
        h = rms(x, get(f"blk.{i}.ffn_norm.weight"))
        gate = h @ get(f"blk.{i}.ffn_gate.weight").T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ get(f"blk.{i}.ffn_up.weight").T)) @ get(
            f"blk.{i}.ffn_down.weight").T
    x = rms(x, get("output_norm.weight"))
    output = get("output.weight") if file.has_tensor("output.weight") else embedding
    return x @ output.T


def _numpy(variable):
    import keras

    return np.array(keras.ops.convert_to_numpy(variable), dtype="float32")


def write_tiny_gpt2_preset(folder, seed=0, max_sequence_length=64):
    """Writes a tiny random keras-hub GPT-2 preset (backbone and the byte-level
    tokenizer above) to `folder`; returns it as a string."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    tokens, merges, _ = byte_level_vocabulary()
    backbone = keras_hub.models.GPT2Backbone(
        # keras-hub's Hugging Face reader takes GPT-2's inner size as 4 x hidden.
        vocabulary_size=len(tokens), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=64, max_sequence_length=max_sequence_length)
    backbone.save_to_preset(str(folder))
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)}, merges=merges)
    tokenizer.save_to_preset(str(folder))
    return str(folder)
