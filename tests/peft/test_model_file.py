"""`.keras` round trips of keras-hub models with PEFT layers inside their blocks."""

import keras
import numpy as np
import pytest

from kft import peft
from kft.errors import KftError
from kft.layers import BottleneckAdapter
from kft.layers import LoRAEinsumDense
from tests.helpers.peft_models import BERT_LAYERS
from tests.helpers.peft_models import compile_for_logits
from tests.helpers.peft_models import randomize_adapters
from tests.helpers.peft_models import snapshot
from tests.helpers.peft_models import tiny_bert
from tests.helpers.peft_models import token_batch


def test_lora_and_adapters_in_keras_hub_blocks_round_trip(tmp_path):
    model = tiny_bert()
    features, labels = token_batch()
    peft.apply_lora(model, rank=2, dora=True, adapter_name="main")
    peft.add_adapter(model, "spare", rank=3)
    peft.apply_bottleneck_adapters(model, bottleneck_dim=4, train_also=["logits"])
    compile_for_logits(model)
    model.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    outputs = model.predict(features, verbose=0)
    weights = snapshot(model)
    model.save(tmp_path / "tuned.keras")

    # Plain Keras rebuilds the blocks with plain sublayers: the weights do not fit.
    with pytest.raises(ValueError, match="could not be loaded"):
        keras.models.load_model(tmp_path / "tuned.keras")

    loaded = peft.load_model(tmp_path / "tuned.keras", train_also=["logits"])
    assert [p for p, _ in peft.lora_layers(loaded)] == BERT_LAYERS
    query = dict(peft.lora_layers(loaded))[BERT_LAYERS[0]]
    assert type(query) is LoRAEinsumDense
    assert query.adapter_names == ["main", "spare"] and query.active_adapter == "main"
    assert query.adapter_spec("main").dora
    block = loaded.backbone.get_layer("transformer_layer_1")
    assert isinstance(block._feedforward_dropout, BottleneckAdapter)
    for variable in loaded.weights:
        np.testing.assert_array_equal(variable.numpy(), weights[variable.path])
    np.testing.assert_allclose(loaded.predict(features, verbose=0), outputs, atol=1e-6)
    assert {v.path for v in loaded.trainable_weights} == {v.path for v in model.trainable_weights}
    assert int(loaded.optimizer.iterations.numpy()) == 2  # optimizer state came back

    # Training continues: adapters move, the base stays.
    loaded.fit(features, labels, epochs=1, batch_size=8, verbose=0)
    moved = {v.path for v in loaded.weights if not np.array_equal(v.numpy(), weights[v.path])}
    assert moved and all(
        "lora_" in p and "spare" not in p or "adapter/" in p or p.startswith("logits/")
        for p in moved
    )


def test_merged_state_survives_the_round_trip(tmp_path):
    model = tiny_bert()
    features, _ = token_batch()
    peft.apply_lora(model, rank=2, dora=True)
    randomize_adapters(model)
    unmerged = model.predict(features, verbose=0)
    base_kernel = np.array(dict(peft.lora_layers(model))[BERT_LAYERS[0]]._kernel.numpy())
    peft.merge(model)
    model.save(tmp_path / "merged.keras")
    loaded = peft.load_model(tmp_path / "merged.keras", compile=False)
    query = dict(peft.lora_layers(loaded))[BERT_LAYERS[0]]
    assert query.merged_adapter == "default"
    np.testing.assert_allclose(loaded.predict(features, verbose=0), unmerged, atol=1e-5)
    peft.unmerge(loaded)
    np.testing.assert_allclose(query._kernel.numpy(), base_kernel, atol=1e-6)
    np.testing.assert_allclose(loaded.predict(features, verbose=0), unmerged, atol=1e-5)


def test_not_a_keras_file_is_refused(tmp_path):
    (tmp_path / "model.keras").write_text("not a zip")
    with pytest.raises(KftError, match="is not a readable .keras file"):
        peft.load_model(tmp_path / "model.keras")
