"""kft.interpolate: WiSE-FT weight interpolation, full fine-tunes and LoRA."""

import re

import keras
import numpy as np
import pytest

import kft
from kft import peft
from kft import saving
from kft.errors import KftError
from kft.interpolation import Interpolation
from kft.interpolation import weight_paths
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import tiny_bert
from tests.helpers.peft_models import token_batch
from tests.helpers.tiny_models import random_images
from tests.helpers.tiny_models import tiny_image_model

IMAGES = random_images(8)[0]
TOKENS = token_batch(4)[0]


def _values(model):
    return {path: np.array(variable.numpy()) for path, variable in weight_paths(model).items()}


def _randomized(model, seed):
    """Every float weight made random (BatchNorm statistics too, variances
    positive), so no two models share a value by accident."""
    rng = np.random.default_rng(seed)
    for path, variable in weight_paths(model).items():
        values = rng.normal(scale=0.3, size=variable.shape)
        variable.assign(np.abs(values) + 0.5 if path.endswith("moving_variance") else values)
    return model


def _image_pair(head="head_dense", classes=3):
    pretrained = _randomized(tiny_image_model(3), seed=0)
    finetuned = _randomized(_image_model(head, classes), seed=1)
    return pretrained, finetuned


def _image_model(head, classes):
    """tiny_image_model with its head layer named `head` (a new head when the
    name differs from the pretrained model's)."""
    model = tiny_image_model(classes)
    if head == "head_dense":
        return model
    features = model.get_layer("head_dropout").output
    outputs = keras.layers.Dense(classes, activation="softmax", name=head)(features)
    return keras.Model(model.input, outputs, name="tiny_new_head")


def _predict(model, x=IMAGES):
    return model.predict(x, verbose=0)


# --------------------------------------------------------------- full fine-tune


def test_the_ends_are_the_two_models_and_the_inputs_stay_unchanged():
    pretrained, finetuned = _image_pair()
    before = (_values(pretrained), _values(finetuned))

    np.testing.assert_array_equal(_predict(kft.interpolate(pretrained, finetuned, 1.0)),
                                  _predict(finetuned))
    np.testing.assert_array_equal(_predict(kft.interpolate(pretrained, finetuned, 0)),
                                  _predict(pretrained))
    half = kft.interpolate(pretrained, finetuned, 0.5)
    for path, value in _values(half).items():
        np.testing.assert_array_equal(value, (1 - 0.5) * before[0][path] + 0.5 * before[1][path],
                                      err_msg=path)
    assert half is not finetuned and not half.compiled
    for model, values in zip((pretrained, finetuned), before):
        for path, value in _values(model).items():
            np.testing.assert_array_equal(value, values[path], err_msg=path)


def test_a_new_head_keeps_its_fine_tuned_weights():
    pretrained, finetuned = _image_pair(head="head_new", classes=2)
    mixer = Interpolation(pretrained, finetuned)
    assert mixer.kept == ["head_new/kernel", "head_new/bias"] and len(mixer.mixed) == 12

    start = mixer.at(0.0)
    # Expected: the pretrained backbone under the fine-tuned head.
    expected = _image_model("head_new", 2)
    for path, variable in weight_paths(expected).items():
        source = finetuned if path.startswith("head_new") else pretrained
        variable.assign(weight_paths(source)[path])
    np.testing.assert_array_equal(_predict(start), _predict(expected))
    np.testing.assert_array_equal(_predict(mixer.at(1.0)), _predict(finetuned))


def test_keep_holds_a_head_the_pretrained_model_also_has():
    pretrained, finetuned = _image_pair()
    mixed = _values(kft.interpolate(pretrained, finetuned, 0.0, keep="head"))
    fine, pre = _values(finetuned), _values(pretrained)
    for path, value in mixed.items():
        np.testing.assert_array_equal(value, (fine if path.startswith("head_") else pre)[path])


def test_extrapolation_goes_past_the_fine_tuned_model_when_allowed():
    pretrained, finetuned = _image_pair()
    beyond = _values(kft.interpolate(pretrained, finetuned, 1.5, allow_extrapolation=True))
    fine, pre = _values(finetuned), _values(pretrained)
    path = "backbone/block1_conv/kernel"
    np.testing.assert_array_equal(beyond[path], (1 - 1.5) * pre[path] + 1.5 * fine[path])


def test_the_interpolated_model_reloads_to_the_same_outputs(tmp_path):
    pretrained, finetuned = _image_pair()
    half = kft.interpolate(pretrained, finetuned, 0.5)
    half.save(tmp_path / "half.keras")
    np.testing.assert_array_equal(
        _predict(saving.load_model(tmp_path / "half.keras", compile=False)), _predict(half))


# ------------------------------------------------------------------------ LoRA


def _lora_bert(dora=False):
    """The tiny BERT (its pretrained state) and a copy fine-tuned with LoRA:
    trained adapters and a trained new head (`logits`)."""
    pretrained = tiny_bert()
    pretrained(TOKENS)
    tuned = tiny_bert()
    tuned(TOKENS)
    peft.apply_lora(tuned, rank=2, alpha=4, dora=dora, train_also=["logits"])
    randomize_adapters(tuned)
    logits = tuned.get_layer("logits").kernel
    logits.assign(logits + np.random.default_rng(2).normal(scale=0.5, size=logits.shape))
    return pretrained, tuned


def _outputs(model):
    return keras.ops.convert_to_numpy(model(TOKENS, training=False))


def test_lora_alpha_scales_the_adapter_update_without_a_second_model():
    _, tuned = _lora_bert()
    before = _values(tuned)
    with peft.without_adapters(tuned):
        base = _outputs(tuned)

    np.testing.assert_array_equal(_outputs(kft.interpolate(None, tuned, 1.0)), _outputs(tuned))
    np.testing.assert_array_equal(_outputs(kft.interpolate(None, tuned, 0.0)), base)
    assert not np.allclose(base, _outputs(tuned))  # the adapters did change the outputs

    half = Interpolation(None, tuned)
    assert len(half.scaled) == 4 and not half.mixed
    for path, value in _values(half.at(0.5)).items():
        expected = 0.5 * before[path] if "/lora_b_" in path else before[path]
        np.testing.assert_array_equal(value, expected, err_msg=path)
    for path, value in _values(tuned).items():
        np.testing.assert_array_equal(value, before[path], err_msg=path)


def test_lora_with_the_pretrained_model_mixes_the_rest_too():
    pretrained, tuned = _lora_bert()
    pre, fine = _values(pretrained), _values(tuned)
    half = _values(kft.interpolate(pretrained, tuned, 0.5))
    assert not np.array_equal(pre["logits/kernel"], fine["logits/kernel"])
    np.testing.assert_array_equal(half["logits/kernel"],
                                  0.5 * pre["logits/kernel"] + 0.5 * fine["logits/kernel"])
    query = "bert/transformer_layer_0/self_attention_layer/query"
    np.testing.assert_array_equal(half[f"{query}/lora_b_default"],
                                  0.5 * fine[f"{query}/lora_b_default"])
    np.testing.assert_array_equal(half[f"{query}/lora_a_default"],
                                  fine[f"{query}/lora_a_default"])


def test_a_merged_lora_model_interpolates_like_a_full_fine_tune():
    pretrained, tuned = _lora_bert()
    peft.merge(tuned)
    query = "bert/transformer_layer_0/self_attention_layer/query/kernel"
    with pytest.raises(KftError, match="holds no active, unmerged kft LoRA adapter"):
        kft.interpolate(None, tuned, 0.5)
    half = kft.interpolate(pretrained, tuned, 0.5)
    np.testing.assert_array_equal(
        _values(half)[query], 0.5 * _values(pretrained)[query] + 0.5 * _values(tuned)[query])
    np.testing.assert_array_equal(_outputs(kft.interpolate(pretrained, tuned, 1.0)),
                                  _outputs(tuned))


def test_a_lora_mix_reloads_to_the_same_outputs(tmp_path):
    _, tuned = _lora_bert()
    half = kft.interpolate(None, tuned, 0.5)
    half.save(tmp_path / "half.keras")
    reloaded = saving.load_model(tmp_path / "half.keras", compile=False)
    np.testing.assert_allclose(_outputs(reloaded), _outputs(half), atol=1e-6)
    assert peft.active_adapter(reloaded) == "default"


# ---------------------------------------------------------------- bad inputs


def _trained_adapter_as_pretrained():
    pretrained, tuned = _lora_bert()
    return {"pretrained_model": tuned, "finetuned_model": pretrained, "alpha": 0.5}


def _unrelated_pretrained():
    inputs = keras.Input((4,))
    other = keras.Model(inputs, keras.layers.Dense(2, name="other")(inputs))
    return {"pretrained_model": other, "finetuned_model": _image_pair()[1], "alpha": 0.5}


def _quantized_finetuned():
    arguments = _images()
    arguments["finetuned_model"].quantize("int8")
    return arguments


def _images(**arguments):
    pretrained, finetuned = _image_pair()
    return {"pretrained_model": pretrained, "finetuned_model": finetuned, "alpha": 0.5,
            **arguments}


BAD_INPUTS = [
    ("alpha below 0", lambda: _images(alpha=-0.1), "alpha must be in [0, 1]"),
    ("alpha above 1", lambda: _images(alpha=1.5), "pass allow_extrapolation=True"),
    ("alpha not finite", lambda: _images(alpha=float("nan"), allow_extrapolation=True),
     "alpha must be a finite number"),
    ("alpha a string", lambda: _images(alpha="0.5"), "alpha must be a number, got '0.5'"),
    ("alpha a bool", lambda: _images(alpha=True), "alpha must be a number, got True"),
    ("fine-tuned not a model", lambda: _images(finetuned_model="model.keras"),
     "finetuned_model must be a Keras model, got str"),
    ("pretrained not a model", lambda: _images(pretrained_model=keras.layers.Dense(2)),
     "pretrained_model must be a Keras model, got Dense"),
    ("shapes differ at a path",
     lambda: _images(finetuned_model=_image_model("head_dense", 2)),
     "different shapes at the same path (2: head_dense/kernel (8, 3) vs (8, 2)"),
    ("no pretrained model, no adapters", lambda: _images(pretrained_model=None),
     "holds no active, unmerged kft LoRA adapter"),
    ("no shared weights", _unrelated_pretrained, "share no weight path"),
    ("keep matches nothing", lambda: _images(keep="no_such_layer"), "matches nothing"),
    ("quantized fine-tuned model", _quantized_finetuned,
     "has quantized layers (head_dense): interpolate the float models"),
    ("DoRA adapters", lambda: {"pretrained_model": None, "finetuned_model": _lora_bert(True)[1],
                               "alpha": 0.5}, "holds a DoRA adapter"),
    ("pretrained with a trained adapter", _trained_adapter_as_pretrained,
     "has a trained LoRA adapter active"),
]


@pytest.mark.parametrize("arguments, message", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_inputs_are_one_clear_error(arguments, message):
    with pytest.raises(KftError, match=re.escape(message)):
        kft.interpolate(**arguments())
