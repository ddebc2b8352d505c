"""freeze/unfreeze take effect in training, nested models, BatchNorm policy, saving."""

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.freezing import freeze
from kft.freezing import prepare_optimizer
from kft.freezing import unfreeze
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data
from tests.helpers.tiny_models import tiny_text_classifier
from tests.helpers.tiny_models import tiny_text_data
from tests.helpers.tiny_models import values


def _fit(model, steps=3, compile=True):
    x, y = tiny_data(8 * steps)
    if compile:
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    before = values(model)
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    after = values(model)
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    return changed, before, after


def _trainable_paths(model):
    return sorted(v.path for v in model.trainable_variables)


def test_head_only_trains_only_the_head():
    model = tiny_classifier()
    freeze(model)
    result = unfreeze(model, "head")
    assert _trainable_paths(model) == ["head_dense/bias", "head_dense/kernel"]
    assert result.changed_variables == 2
    assert result.trainable_params == 4 * 3 + 3
    changed, _, _ = _fit(model)
    assert changed == {"head_dense/kernel", "head_dense/bias"}


def test_unfreezing_a_sublayer_keeps_its_siblings_frozen():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "name:backbone/conv3$")
    backbone = model.get_layer("backbone")
    # The enclosing model is marked trainable so it does not hide conv3 ...
    assert backbone.trainable and model.trainable
    assert sorted(v.path for v in backbone.trainable_weights) == ["conv3/bias", "conv3/kernel"]
    # ... while its other children keep their own frozen state.
    assert not backbone.get_layer("conv2").trainable
    assert not backbone.get_layer("bn3").trainable
    changed, _, _ = _fit(model)
    assert changed == {"conv3/kernel", "conv3/bias"}


def test_freezing_a_sublayer_inside_a_trainable_model():
    model = tiny_classifier()
    freeze(model, "type:Conv2D")
    assert model.get_layer("backbone").trainable
    assert not any("conv" in v.path for v in model.trainable_variables)
    changed, _, _ = _fit(model)
    assert not any(p.startswith("conv") for p in changed)
    assert {"bn0/gamma", "bn0/moving_mean", "head_dense/kernel"} <= changed


def test_unfreezing_the_backbone_keeps_frozen_batch_norm_frozen():
    model = tiny_classifier()
    freeze(model)
    result = unfreeze(model)
    assert sorted(result.kept_frozen) == [f"backbone/bn{i}" for i in range(4)]
    assert "BatchNormalization" in str(result)
    backbone = model.get_layer("backbone")
    assert all(not backbone.get_layer(f"bn{i}").trainable for i in range(4))
    changed, _, _ = _fit(model)
    for i in range(4):
        assert f"conv{i}/kernel" in changed
        # Inference mode: moving statistics and affine weights untouched.
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            assert f"bn{i}/{name}" not in changed


def test_train_bn_unfreezes_batch_norm_and_its_statistics_move():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, train_bn=True)
    changed, _, _ = _fit(model)
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        assert f"bn2/{name}" in changed


def test_freeze_with_train_bn_leaves_batch_norm_training():
    model = tiny_classifier()
    freeze(model, "name:backbone", train_bn=True)
    changed, _, _ = _fit(model)
    assert not any(p.startswith("conv") for p in changed)
    assert {"bn1/gamma", "bn1/moving_mean", "bn1/moving_variance"} <= changed


def test_selecting_only_norms_unfreezes_batch_norm_without_train_bn():
    model = tiny_classifier()
    freeze(model)
    result = unfreeze(model, "norms")
    assert result.kept_frozen == []
    changed, _, _ = _fit(model)
    assert {"bn0/gamma", "bn0/beta", "bn0/moving_mean"} <= changed
    assert not any(p.startswith(("conv", "head")) for p in changed)


def test_bitfit_trains_biases_only():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "biases")
    assert _trainable_paths(model) == sorted(
        [f"conv{i}/bias" for i in range(4)] + ["head_dense/bias"]
    )
    changed, _, _ = _fit(model)
    assert changed == {f"conv{i}/bias" for i in range(4)} | {"head_dense/bias"}


def test_unfreezing_between_fits_takes_effect_without_recompiling():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "head")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.build((None, 16, 16, 3))
    prepare_optimizer(model)
    changed, _, _ = _fit(model, compile=False)
    assert changed == {"head_dense/kernel", "head_dense/bias"}
    # Plain Keras would keep training the head only (the traced train function).
    unfreeze(model, "name:conv3$")
    changed, _, _ = _fit(model, compile=False)
    assert changed == {"head_dense/kernel", "head_dense/bias", "conv3/kernel", "conv3/bias"}
    freeze(model, "head")
    changed, _, _ = _fit(model, compile=False)
    assert changed == {"conv3/kernel", "conv3/bias"}


def test_unfreezing_after_the_optimizer_was_built_is_never_silently_ignored():
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "head")
    _fit(model)
    unfreeze(model, "name:conv3$")
    # The optimizer has no slots for conv3: Keras refuses instead of quietly
    # training the head alone ...
    with pytest.raises(ValueError, match="Unknown variable"):
        _fit(model, compile=False)
    # ... and compiling again (a new optimizer) trains the new set.
    changed, _, _ = _fit(model)
    assert changed == {"head_dense/kernel", "head_dense/bias", "conv3/kernel", "conv3/bias"}


def test_partially_frozen_model_survives_keras_round_trip(tmp_path):
    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "name:conv3$|head_dense", train_bn=False)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert _trainable_paths(loaded) == _trainable_paths(model)
    assert not loaded.get_layer("backbone").get_layer("bn3").trainable
    changed, _, _ = _fit(loaded)
    assert changed == {"conv3/kernel", "conv3/bias", "head_dense/kernel", "head_dense/bias"}


def test_freeze_accepts_a_layer_and_a_callable():
    model = tiny_classifier()
    backbone = model.get_layer("backbone")
    freeze(backbone, lambda path, layer: path in ("conv0", "bn0"))
    assert not backbone.get_layer("conv0").trainable
    assert backbone.get_layer("conv1").trainable
    assert "conv0/kernel" not in {v.path for v in model.trainable_variables}


def test_empty_selection_is_an_error_that_lists_candidates():
    model = tiny_classifier()
    with pytest.raises(KftError, match=r"name:conv9.*matches nothing.*backbone/conv"):
        freeze(model, "name:conv9")
    with pytest.raises(KftError, match=r"head.*matches nothing.*conv0"):
        unfreeze(model.get_layer("backbone"), "head")


def test_keras_hub_backbone_sublayers_freeze_and_train():
    model = tiny_text_classifier(num_layers=3)
    freeze(model)
    unfreeze(model, "name:transformer_layer_1/self_attention_layer/(query|value)$,head")
    unfreeze(model, "name:transformer_layer_2/.*layer_norm")
    expected = {
        "head_dense/kernel", "head_dense/bias",
        "transformer_layer_1/self_attention_layer/query/kernel",
        "transformer_layer_1/self_attention_layer/query/bias",
        "transformer_layer_1/self_attention_layer/value/kernel",
        "transformer_layer_1/self_attention_layer/value/bias",
    } | {
        f"transformer_layer_2/{norm}/{name}"
        for norm in ("self_attention_layer_norm", "feedforward_layer_norm")
        for name in ("gamma", "beta")
    }
    assert set(_trainable_paths(model)) == expected
    backbone = model.get_layer("backbone")
    attention = backbone.transformer_layers[1]._self_attention_layer
    assert attention.trainable and not attention._key_dense.trainable
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    x, y = tiny_text_data()
    before = values(model)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    after = values(model)
    assert {p for p in before if not np.array_equal(before[p], after[p])} == expected


def test_unfreezing_everything_keeps_lora_base_kernels_frozen():
    import keras

    from kft import peft

    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head_dense")(hidden))
    peft.apply_lora(model, targets=["hidden"], rank=2)
    freeze(model)
    unfreeze(model, select="all")
    trainable = {v.path for v in model.trainable_variables}
    # The base kernel never trains under LoRA; its bias may (PEFT bias="all", BitFit).
    assert "hidden/kernel" not in trainable and "hidden/bias" in trainable
    assert any("lora" in path for path in trainable) and "head_dense/kernel" in trainable
