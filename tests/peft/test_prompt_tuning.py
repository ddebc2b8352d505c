"""Prompt tuning: a soft prompt before a frozen keras-hub text backbone."""

import keras
import numpy as np
import pytest

from kft import peft
from kft.errors import KftError
from kft.layers import SoftPrompt
from tests.helpers.peft_models import compile_for_logits
from tests.helpers.peft_models import snapshot
from tests.helpers.peft_models import tiny_bert
from tests.helpers.peft_models import token_batch


def prompted_classifier(num_tokens=4):
    backbone = tiny_bert().backbone
    prompted = peft.apply_prompt_tuning(backbone, num_tokens=num_tokens, seed=0)
    logits = keras.layers.Dense(2, name="head_dense")(prompted.output["pooled_output"])
    return keras.Model(prompted.input, logits, name="prompted_classifier"), backbone, prompted


def test_prompt_is_prepended_and_cropped_from_the_sequence_output():
    backbone = tiny_bert().backbone
    features, _ = token_batch(count=4, length=8)
    prompted = peft.apply_prompt_tuning(backbone, num_tokens=3, seed=0)
    outputs = prompted(features)
    assert tuple(outputs["sequence_output"].shape) == (4, 8, 32)
    prompt = prompted.get_layer("soft_prompt")
    assert prompt.prompt.shape == (3, 32)
    # Vocabulary initialization: the rows are token embeddings.
    table = backbone.token_embedding.embeddings.numpy()
    for row in prompt.prompt.numpy():
        assert np.any(np.all(np.isclose(table, row), axis=1))
    # The prompt changes what the tokens see.
    plain = backbone(features)["sequence_output"]
    assert not np.allclose(outputs["sequence_output"], plain, atol=1e-4)
    assert {v.path for v in prompted.trainable_weights} == {"soft_prompt/prompt"}


def test_fit_changes_only_the_prompt():
    model, backbone, _ = prompted_classifier()
    features, labels = token_batch()
    model.get_layer("head_dense").trainable = False
    before = snapshot(model)
    compile_for_logits(model, rate=0.05)
    model.fit(features, labels, epochs=2, batch_size=8, verbose=0)
    moved = {v.path for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}
    assert moved == {"soft_prompt/prompt"}
    assert all(not v.trainable for v in backbone.weights)


def test_round_trip_and_refreezing_after_reload(tmp_path):
    model, _, _ = prompted_classifier()
    features, labels = token_batch()
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    outputs = model.predict(features, verbose=0)
    model.save(tmp_path / "prompted.keras")
    loaded = keras.models.load_model(tmp_path / "prompted.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(features, verbose=0), outputs, atol=1e-6)
    assert isinstance(loaded.get_layer("soft_prompt"), SoftPrompt)
    # keras-hub blocks rebuild their sublayers trainable; freeze_base fixes that.
    counts = peft.freeze_base(loaded, train_also=["head_dense"])
    assert {v.path for v in loaded.trainable_weights} == {
        "soft_prompt/prompt", "head_dense/kernel", "head_dense/bias"
    }
    assert counts.trainable == 4 * 32 + 32 * 2 + 2


def test_non_text_models_are_refused():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(KftError, match="needs a keras-hub text backbone"):
        peft.apply_prompt_tuning(plain)
    with pytest.raises(KftError, match="Unknown soft-prompt init"):
        peft.apply_prompt_tuning(tiny_bert().backbone, init="zeros")
