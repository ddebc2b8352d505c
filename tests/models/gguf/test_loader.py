"""kft.models.gguf.loader: a GGUF file to a keras-hub CausalLM that generates and saves."""

import keras
import keras_hub
import numpy as np
import pytest

from kft import saving
from kft.errors import KftError
from kft.models.gguf.loader import load_causal_lm
from kft.models.gguf.preprocessor import ChatCausalLMPreprocessor
from kft.models.gguf.tokenizer import ChatBytePairTokenizer
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf

PROMPTS = ["<|im_start|>user\nHello world<|im_end|>\n", "the cat sat on"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama_backbone())


def _greedy_by_hand(model, prompt, max_length):
    """Greedy decoding one full forward pass per token, stopping at an end token."""
    tokenizer = model.preprocessor.tokenizer
    ids = [int(i) for i in tokenizer(prompt)]
    stops = {tokenizer.end_token_id, tokenizer.end_of_turn_token_id}
    generated = []
    while len(ids) < max_length:
        x = {"token_ids": np.array([ids]), "padding_mask": np.ones((1, len(ids)), "int32")}
        next_id = int(np.asarray(model(x))[0, -1].argmax())
        if next_id in stops:
            break
        ids.append(next_id)
        generated.append(next_id)
    return tokenizer.detokenize(generated) if generated else ""


def test_the_model_is_a_keras_hub_llama_with_the_gguf_tokenizer(tiny_file):
    model = load_causal_lm(tiny_file, sequence_length=24)
    assert isinstance(model, keras_hub.models.LlamaCausalLM)
    assert isinstance(model.preprocessor, ChatCausalLMPreprocessor)
    assert isinstance(model.preprocessor.tokenizer, ChatBytePairTokenizer)
    assert model.preprocessor.sequence_length == 24
    assert model.preprocessor.chat_template.startswith("{% for message in messages %}")

    # Training packs the text as written: no start token (add_bos_token is false).
    x, y, weights = model.preprocessor(["Hello world"])
    tokenizer = model.preprocessor.tokenizer
    assert list(np.asarray(x["token_ids"])[0, :3]) == [tokenizer.token_to_id("Hello"),
                                                       tokenizer.token_to_id("Ġworld"), 2]
    assert list(np.asarray(y)[0, :2]) == [tokenizer.token_to_id("Ġworld"), 2]
    # keras-hub's own generate_preprocess would put a start token first regardless.
    packed = model.preprocessor.generate_preprocess(["Hello world"], sequence_length=8)
    assert list(np.asarray(packed["token_ids"])[0, :2]) == list(np.asarray(x["token_ids"])[0, :2])


def test_greedy_generate_continues_each_prompt_like_a_greedy_loop(tiny_file):
    model = load_causal_lm(tiny_file, sequence_length=24)
    model.compile(sampler="greedy", jit_compile=False)
    expected = [_greedy_by_hand(model, prompt, 20) for prompt in PROMPTS]
    assert all(expected), expected  # Seeded so that no prompt ends at once.
    assert model.generate(PROMPTS, max_length=20, strip_prompt=True) == expected


def test_random_weights_keep_the_architecture_and_tokenizer(tiny_file):
    keras.utils.set_random_seed(1)
    trained, untrained = load_causal_lm(tiny_file), load_causal_lm(tiny_file, load_weights=False)
    def config(layer):
        return {key: value for key, value in layer.get_config().items() if key != "name"}

    assert config(untrained.backbone) == config(trained.backbone)
    assert config(untrained.preprocessor.tokenizer) == config(trained.preprocessor.tokenizer)
    embedding = untrained.backbone.token_embedding.embeddings
    assert not np.allclose(embedding, trained.backbone.token_embedding.embeddings)


@pytest.mark.parametrize("load", [keras.saving.load_model, saving.load_model],
                         ids=["keras", "kft"])
def test_the_whole_model_survives_a_keras_file(load, tiny_file, tmp_path):
    model = load_causal_lm(tiny_file, sequence_length=24)
    model.compile(sampler="greedy", jit_compile=False)
    x = model.preprocessor.generate_preprocess(PROMPTS, sequence_length=12)
    logits = np.asarray(model(x))
    text = model.generate(PROMPTS, max_length=16)
    model.save(tmp_path / "lm.keras")

    loaded = load(tmp_path / "lm.keras")
    loaded.compile(sampler="greedy", jit_compile=False)
    assert type(loaded.preprocessor) is ChatCausalLMPreprocessor
    np.testing.assert_array_equal(np.asarray(loaded(x)), logits)
    assert loaded.generate(PROMPTS, max_length=16) == text
    before, after = model.preprocessor.tokenizer, loaded.preprocessor.tokenizer
    assert after.get_config() == before.get_config()
    assert (after.chat_template, after.end_of_turn_token_id, after.pad_token_id) == (
        before.chat_template, before.end_of_turn_token_id, before.pad_token_id)


def test_an_architecture_kft_does_not_map_is_named(tmp_path):
    path = write_llama_gguf(tmp_path / "mamba.gguf", tiny_llama_backbone(), arch="mamba")
    with pytest.raises(KftError, match="is a 'mamba' model; kft maps GGUF files of the "
                                       "architectures llama"):
        load_causal_lm(path)


def test_token_ids_past_the_embedding_are_refused(tmp_path):
    path = write_llama_gguf(tmp_path / "short.gguf", tiny_llama_backbone(vocabulary_size=200))
    with pytest.raises(KftError, match="ids up to .* embeds only 200 tokens"):
        load_causal_lm(path)
