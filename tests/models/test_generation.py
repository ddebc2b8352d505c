"""kft.text.generate on a tiny random Llama: keras-hub's answers, in order, cut to max_tokens."""

import keras
import keras_hub
import numpy as np
import pytest

import kft
from kft.errors import KftError
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf

PROMPTS = ["Hello world the cat sat on the mat", "the cat", "Hello", "the mat on the cat sat"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_llama_backbone())
    return kft.text.causal_lm(path, sequence_length=32)


def _prompt_length(model, prompt):
    """The prompt's tokens as generation packs them (with a start token where used)."""
    packed = model.preprocessor.generate_preprocess([prompt], sequence_length=32)
    return int(np.asarray(packed["padding_mask"]).sum())


def test_answers_are_keras_hubs_greedy_answers_in_the_prompts_order(model):
    answers = kft.text.generate(model, PROMPTS, max_tokens=6, batch_size=3)
    model.compile(sampler="greedy")
    for prompt, answer in zip(PROMPTS, answers):
        # Alone, at a length that gives it exactly six new tokens.
        length = _prompt_length(model, prompt) + 6
        expected = model.generate(prompt, max_length=length, strip_prompt=True)
        assert answer == expected, prompt


def test_a_string_prompt_gives_a_string_and_chat_renders_the_template(model):
    message = "the cat sat"
    chat = kft.text.format_chat(model, [{"role": "user", "content": message}],
                                add_generation_prompt=True)
    assert kft.text.generate(model, message, max_tokens=4, chat=True) == \
        kft.text.generate(model, [chat], max_tokens=4)[0]
    assert kft.text.generate(model, [], max_tokens=4) == []


def test_sampling_options_pick_keras_hub_samplers(model):
    kft.text.generate(model, PROMPTS[:2], max_tokens=3, top_p=0.9, temperature=0.7, seed=1)
    assert isinstance(model.sampler, keras_hub.samplers.TopPSampler)
    assert model.sampler.p == 0.9 and model.sampler.temperature == 0.7
    kft.text.generate(model, PROMPTS[:2], max_tokens=3, top_k=5, seed=1)
    assert isinstance(model.sampler, keras_hub.samplers.TopKSampler)
    kft.text.generate(model, PROMPTS[:2], max_tokens=3)
    assert isinstance(model.sampler, keras_hub.samplers.GreedySampler)


@pytest.mark.parametrize("options, message", [
    ({"max_tokens": 0}, "max_tokens must be a whole number >= 1"),
    ({"max_tokens": 2.5}, "max_tokens must be a whole number >= 1"),
    ({"temperature": -1}, "temperature must be a number >= 0"),
    ({"top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"top_k": 0}, "top_k must be a whole number >= 1"),
    ({"batch_size": 0}, "batch_size must be a whole number >= 1"),
])
def test_bad_options_are_one_clear_error(model, options, message):
    with pytest.raises(KftError, match=message):
        kft.text.generate(model, PROMPTS, **options)


def test_a_prompt_that_is_not_a_string_is_named(model):
    with pytest.raises(KftError, match="Prompt 1 is a int, not a string"):
        kft.text.generate(model, ["ok", 3])


def test_a_classifier_cannot_generate():
    classifier = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(KftError, match="A Sequential cannot generate text"):
        kft.text.generate(classifier, ["hello"])


def test_a_prompt_past_the_models_positions_is_refused():
    keras.utils.set_random_seed(0)
    from tests.helpers.gguf_files import byte_level_vocabulary

    tokens, merges, _ = byte_level_vocabulary()
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(tokens), num_layers=1, num_heads=2, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16)
    tokenizer = keras_hub.models.GPT2Tokenizer(
        vocabulary={t: i for i, t in enumerate(tokens)}, merges=merges)
    gpt2 = keras_hub.models.GPT2CausalLM(
        backbone=backbone,
        preprocessor=keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=16))
    with pytest.raises(KftError, match="more than the model's 16 positions"):
        kft.text.generate(gpt2, ["the cat sat on the mat"], max_tokens=12)


def test_merging_lora_drops_the_traced_generation_loop(tmp_path):
    path = write_llama_gguf(tmp_path / "tiny.gguf", tiny_llama_backbone())
    model = kft.text.causal_lm(path, sequence_length=32)
    kft.peft.apply_lora(model, rank=4, alpha=8)
    rng = np.random.default_rng(0)
    for layer in kft.peft.lora_layers(model):
        for variable in layer[1].trainable_variables:
            if "lora_b" in variable.path:
                variable.assign(rng.normal(0, 0.5, variable.shape).astype("float32"))
    unmerged = kft.text.generate(model, PROMPTS, max_tokens=6)
    kft.peft.merge(model)
    # Traced before the merge, the loop would add the adapter on top of the merged kernel.
    assert kft.text.generate(model, PROMPTS, max_tokens=6) == unmerged
