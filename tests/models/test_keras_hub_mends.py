"""kft.models.keras_hub_mends: a tied keras-hub Llama saves a config that rebuilds tied."""

import keras
import keras_hub
import numpy as np

from kft.models.keras_hub_mends import mend_llama_backbone_config
from tests.helpers.gguf_files import tiny_llama_backbone


def test_a_tied_llama_backbone_round_trips_through_a_keras_file(tmp_path):
    assert mend_llama_backbone_config()
    backbone = tiny_llama_backbone(tie=True)
    assert backbone.get_config()["tie_word_embeddings"] is True
    assert keras_hub.models.Llama3Backbone.from_config(
        dict(backbone.get_config(), name="llama3")).tie_word_embeddings
    ids = np.array([[3, 4, 5, 6]])
    x = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras")
    assert loaded.tie_word_embeddings
    np.testing.assert_array_equal(loaded(x), backbone(x))


def test_an_untied_backbone_stays_untied():
    mend_llama_backbone_config()
    assert tiny_llama_backbone(tie=False).get_config()["tie_word_embeddings"] is False
