"""Layer groups: known architectures by stage, the head last, a fallback split."""

import keras
import pytest
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import with_head

from kft.freezing import layer_groups

A = keras.applications


def _names(model):
    return [g.name for g in layer_groups(model)]


def _group_of(model, path):
    return next(g.name for g in layer_groups(model) if path in g.paths)


def _assert_partition(model):
    groups = layer_groups(model)
    paths = [p for g in groups for p in g.paths]
    assert len(paths) == len(set(paths))
    grouped = {id(v) for g in groups for v in g.variables}
    assert grouped == {id(v) for v in model.weights}
    assert sum(g.num_params for g in groups) == model.count_params()


def test_fallback_splits_evenly_and_head_comes_last():
    model = tiny_classifier(blocks=4)
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["group_1", "group_2", "group_3", "group_4", "head"]
    # Layers without weights before the first group (input, preprocess) join it.
    assert groups[0].paths[:2] == ["image", "preprocess"]
    assert groups[0].paths[2].startswith("backbone/input_layer")
    assert groups[1].paths == ["backbone/conv1", "backbone/bn1", "backbone/relu1"]
    assert groups[-1].paths == ["head_pool", "head_dropout", "head_dense"]
    _assert_partition(model)


def test_fallback_group_count_is_configurable():
    model = tiny_classifier(blocks=4)
    assert [g.name for g in layer_groups(model, fallback_groups=2)] == [
        "group_1",
        "group_2",
        "head",
    ]


def test_trainable_counts_follow_freezing():
    from kft.freezing import freeze

    model = tiny_classifier()
    freeze(model, "name:backbone")
    groups = layer_groups(model)
    assert [g.num_trainable_params for g in groups[:-1]] == [0, 0, 0, 0]
    assert groups[-1].num_trainable_params == groups[-1].num_params


@pytest.fixture(scope="module")
def resnet50():
    return with_head(A.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3)))


def test_resnet_stages(resnet50):
    assert _names(resnet50) == ["conv1", "conv2", "conv3", "conv4", "conv5", "head"]
    assert _group_of(resnet50, "backbone/pool1_pool") == "conv1"
    assert _group_of(resnet50, "backbone/conv4_block1_1_conv") == "conv4"
    assert _group_of(resnet50, "backbone/conv5_block3_out") == "conv5"
    _assert_partition(resnet50)


def test_efficientnet_blocks():
    model = with_head(A.EfficientNetB0(weights=None, include_top=False, input_shape=(32, 32, 3)))
    expected = ["stem"] + [f"block{i}" for i in range(1, 8)] + ["top", "head"]
    assert _names(model) == expected
    assert _group_of(model, "backbone/rescaling") == "stem"
    assert _group_of(model, "backbone/block6d_project_bn") == "block6"
    _assert_partition(model)


def test_keras_hub_efficientnet_lite0_blocks():
    import keras_hub
    from keras_hub.src.utils.timm.convert_efficientnet import convert_backbone_config

    config = convert_backbone_config({"architecture": "efficientnet_lite0"})
    model = with_head(keras_hub.models.EfficientNetBackbone(**config, input_shape=(32, 32, 3)))
    expected = ["stem"] + [f"block{i}" for i in range(1, 8)] + ["top", "head"]
    assert _names(model) == expected
    assert _group_of(model, "backbone/block1a_dwconv") == "block1"
    _assert_partition(model)


@pytest.mark.parametrize(
    "constructor, stages, boundary",
    [
        # MobileNetV2 widths 16 | 24 24 | 32 x3 | 64 x4 | 96 x3 | 160 x3 | 320.
        (A.MobileNetV2, 7,
         ("backbone/block_5_project", "stage3", "backbone/block_6_expand", "stage4")),
        # V3 Small widths 16 | 24 24 | 40 x3 | 48 48 | 96 x3.
        (A.MobileNetV3Small, 5,
         ("backbone/expanded_conv_5_project", "stage3",
          "backbone/expanded_conv_6_expand", "stage4")),
        # V3 Large widths 16 | 24 24 | 40 x3 | 80 x4 | 112 112 | 160 x3.
        (A.MobileNetV3Large, 6,
         ("backbone/expanded_conv_9_project", "stage4",
          "backbone/expanded_conv_10_expand", "stage5")),
    ],
)
def test_mobilenet_stages(constructor, stages, boundary):
    model = with_head(constructor(weights=None, include_top=False, input_shape=(32, 32, 3)))
    expected = ["stem"] + [f"stage{i}" for i in range(1, stages + 1)] + ["top", "head"]
    assert _names(model) == expected
    last_path, last_stage, first_path, next_stage = boundary
    assert _group_of(model, last_path) == last_stage
    assert _group_of(model, first_path) == next_stage
    _assert_partition(model)


def test_vgg16_blocks():
    model = with_head(A.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3)))
    assert _names(model) == [f"block{i}" for i in range(1, 6)] + ["head"]
    assert _group_of(model, "backbone/block3_pool") == "block3"
    _assert_partition(model)


def test_convnext_stages():
    model = with_head(A.ConvNeXtTiny(weights=None, include_top=False, input_shape=(32, 32, 3)))
    assert _names(model) == ["stem", "stage_0", "stage_1", "stage_2", "stage_3", "head"]
    downsampling = "backbone/convnext_tiny_downsampling_block_0/convnext_tiny_downsampling_conv_0"
    assert _group_of(model, downsampling) == "stage_1"
    assert _group_of(model, "backbone/convnext_tiny_stem/convnext_tiny_stem_conv") == "stem"
    _assert_partition(model)


def test_keras_hub_transformer_groups():
    import keras_hub

    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=3,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
    )
    inputs = {name: keras.Input((8,), dtype="int32", name=name) for name in backbone.input}
    pooled = backbone(inputs)["pooled_output"]
    model = keras.Model(inputs, keras.layers.Dense(2, name="head_dense")(pooled))
    groups = layer_groups(model)
    assert [g.name for g in groups] == [
        "embeddings",
        "transformer_layer_0",
        "transformer_layer_1",
        "transformer_layer_2",
        "pooler",
        "head",
    ]
    # Sublayers of a transformer block (attention projections) stay in its group.
    layer1 = next(g for g in groups if g.name == "transformer_layer_1")
    assert any(p.endswith("self_attention_layer/query") for p in layer1.paths)
    assert "bert_backbone/token_embedding" in groups[0].paths
    # Inputs join the group that first uses them.
    assert {"token_ids", "bert_backbone/token_ids"} <= set(groups[0].paths)
    assert groups[4].paths == ["bert_backbone/pooled_dense"]
    _assert_partition(model)
