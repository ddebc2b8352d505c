"""A GGUF file to a keras-hub `CausalLM`: architecture table, tokenizer, weights."""

from kft.errors import KftError
from kft.models.gguf import llama
from kft.models.gguf.reader import open_gguf
from kft.models.keras_hub_mends import mend_llama_backbone_config

# GGUF `general.architecture` -> (mapping module, keras-hub backbone, keras-hub task).
# A mapping module has `backbone_config(file)` and `load_weights(backbone, file)`.
ARCHITECTURES = {
    "llama": (llama, "LlamaBackbone", "LlamaCausalLM"),
}


def load_causal_lm(path, sequence_length=512, load_weights=True):
    """Builds a keras-hub `CausalLM` with its preprocessor from a GGUF file.

    Every tensor is dequantized to float32, so the model computes what the
    quantized file's weights say, at full precision (and 4 bytes a weight).

    Args:
        path: a `.gguf` file.
        sequence_length: tokens per packed sequence (prompt and generated
            text together for `generate`).
        load_weights: `False` keeps keras-hub's random initialisation (the
            same architecture and tokenizer, untrained: a baseline).

    Returns:
        A keras-hub `CausalLM` (a `LlamaCausalLM` for `llama` files) whose
        preprocessor is a `ChatCausalLMPreprocessor`.

    Raises:
        KftError: the file is missing, truncated or damaged, its architecture
            or tokenizer is one kft does not map, or its tensors do not fit.

    Example:
    ```python
    model = load_causal_lm("SmolLM2-135M-Instruct.Q4_1.gguf", sequence_length=128)
    model.generate("<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n")
    ```
    """
    import keras_hub

    from kft.models.gguf.preprocessor import ChatCausalLMPreprocessor
    from kft.models.gguf.tokenizer import tokenizer_from_gguf

    mend_llama_backbone_config()  # Or a tied model's .keras file does not load.
    file = open_gguf(path)
    if file.architecture not in ARCHITECTURES:
        raise KftError(
            f"{file.path} is a {file.architecture!r} model; kft maps GGUF files of the "
            f"architectures {', '.join(sorted(ARCHITECTURES))} onto keras-hub. Use the "
            "model's Hugging Face checkpoint folder or a keras-hub preset instead."
        )
    mapping, backbone_name, task_name = ARCHITECTURES[file.architecture]
    config = mapping.backbone_config(file)
    tokenizer, add_start_token = tokenizer_from_gguf(file)
    largest_id = max(tokenizer.vocabulary.values())
    if largest_id >= config["vocabulary_size"]:
        raise KftError(
            f"{file.path}: the tokenizer has ids up to {largest_id}, but the model embeds "
            f"only {config['vocabulary_size']} tokens."
        )
    backbone = getattr(keras_hub.models, backbone_name)(**config)
    if load_weights:
        mapping.load_weights(backbone, file)
    preprocessor = ChatCausalLMPreprocessor(
        tokenizer, sequence_length=int(sequence_length), add_start_token=add_start_token
    )
    return getattr(keras_hub.models, task_name)(backbone=backbone, preprocessor=preprocessor)
