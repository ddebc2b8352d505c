"""The reference: the model with its adapters off, or a frozen copy that can be restored."""

import numpy as np
import pytest

from kft import peft
from kft.errors import KftError
from kft.regularizers.reference import Reference
from kft.regularizers.reference import adapters_only
from kft.regularizers.reference import frozen_copy
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import token_batch
from tests.helpers.peft_models import tiny_bert
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data


def test_a_copy_is_frozen_and_keeps_the_start_while_the_model_moves():
    model = tiny_classifier()
    x, _ = tiny_data(4)
    start = model.predict(x, verbose=0)
    reference = Reference(model)
    assert reference.kind == "copy" and reference.model is not model
    assert not reference.model.trainable_variables
    saved = reference.arrays()
    for variable in model.trainable_variables:
        variable.assign(variable * 2.0)
    np.testing.assert_allclose(reference.outputs(x), start, atol=1e-6)
    # A resumed run rebuilds the copy from the moved model and restores the start.
    restored = Reference(model, arrays=saved)
    np.testing.assert_allclose(restored.outputs(x), start, atol=1e-6)
    with pytest.raises(KftError, match="saved reference weights do not fit"):
        Reference(model, arrays=dict(list(saved.items())[1:]))


def test_a_keras_hub_lora_model_copies_with_its_adapters():
    model = tiny_bert()
    peft.apply_lora(model, rank=2, train_also="logits")
    randomize_adapters(model, seed=1)
    features, _ = token_batch(4)
    assert not adapters_only(model)  # the head trains too
    copy = frozen_copy(model)
    assert len(peft.lora_layers(copy)) == len(peft.lora_layers(model))
    np.testing.assert_allclose(copy(features, training=False), model(features, training=False),
                               atol=1e-5)


def test_adapters_only_needs_active_unmerged_adapters_and_nothing_else_training():
    model = tiny_bert()
    assert not adapters_only(model)
    peft.apply_lora(model, rank=2)
    assert adapters_only(model)
    peft.merge(model)
    assert not adapters_only(model)
    with pytest.raises(KftError, match="merged"):
        Reference(model, kind="adapters_off")
