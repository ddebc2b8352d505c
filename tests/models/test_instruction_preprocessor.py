"""InstructionCausalLMPreprocessor: a tiny random Llama trains on the response tokens only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import kft
from kft.errors import KftError
from kft.models.gguf.preprocessor import ChatCausalLMPreprocessor
from kft.models.instruction_preprocessor import InstructionCausalLMPreprocessor
from kft.models.instruction_preprocessor import response_loss
from kft.models.instruction_preprocessor import use_instruction_preprocessor
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf

PROMPTS = ["Hello world", "the cat sat on"]
RESPONSES = [" Paris", " the mat"]
END = 2  # <|im_end|>: the tiny vocabulary's end (and end-of-turn) token.


@pytest.fixture(scope="module")
def gguf_path(tmp_path_factory):
    return write_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", tiny_llama_backbone())


def _model(path, sequence_length=16, **options):
    model = kft.text.causal_lm(path, sequence_length=sequence_length)
    options.setdefault("pad_to_multiple_of", None)
    return use_instruction_preprocessor(model, **options)


def _ids(model, text):
    return [int(i) for i in model.preprocessor.tokenizer(text)]


def _pairs(prompts=PROMPTS, responses=RESPONSES):
    return {"prompt": list(prompts), "response": list(responses)}


def _nll(model, x, y):
    """Per-position negative log-likelihood of the labels, in float64."""
    logits = np.asarray(model(x), "float64")
    top = logits.max(-1, keepdims=True)
    log_probabilities = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probabilities, np.asarray(y)[..., None], -1)[..., 0]


def test_prompt_then_response_then_end_token_with_weight_on_the_response(gguf_path):
    model = _model(gguf_path)
    x, y, weights = model.preprocessor(_pairs())
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        p, r = _ids(model, prompt), _ids(model, response)
        sequence = p + r + [END]
        n = len(sequence)
        # As keras-hub packs: the end token is also an input (its label is padding).
        np.testing.assert_array_equal(x["token_ids"][row, :n], sequence)
        np.testing.assert_array_equal(y[row, :n - 1], sequence[1:])
        np.testing.assert_array_equal(x["padding_mask"][row], np.arange(16) < n)
        # Label i is token i + 1: the response and the end token are labels
        # len(p) - 1 ... n - 2; the prompt and the padding weigh nothing.
        expected = np.zeros(16)
        expected[len(p) - 1:n - 1] = 1
        np.testing.assert_array_equal(weights[row], expected)
        assert int(x["token_ids"][row, n]) == model.preprocessor.tokenizer.pad_token_id

    on_prompt = _model(gguf_path, train_on_prompt=True)
    _, _, weights = on_prompt.preprocessor(_pairs())
    lengths = [len(_ids(model, p) + _ids(model, r)) + 1 for p, r in zip(PROMPTS, RESPONSES)]
    np.testing.assert_array_equal(weights, np.arange(16)[None] < np.array(lengths)[:, None] - 1)


def test_a_response_already_ending_in_the_end_token_gets_no_second_one(gguf_path):
    model = _model(gguf_path)
    _, y, weights = model.preprocessor(_pairs(PROMPTS[:1], [" Paris<|im_end|>"]))
    sequence = _ids(model, PROMPTS[0]) + _ids(model, " Paris") + [END]
    np.testing.assert_array_equal(y[0, :len(sequence) - 1], sequence[1:])
    assert float(np.sum(weights)) == len(_ids(model, " Paris")) + 1


def test_the_prompt_is_cut_from_its_start_and_the_response_is_never_cut(gguf_path):
    model = _model(gguf_path, sequence_length=8)
    long_prompt = "the cat sat on the mat the cat sat on the mat"
    prompt, response = _ids(model, long_prompt), _ids(model, " the mat")
    x, y, weights = model.preprocessor(_pairs([long_prompt, "Hello"], [" the mat", " Paris"]))
    keep = 9 - len(response) - 1  # 8 inputs + the last label.
    sequence = prompt[-keep:] + response + [END]
    np.testing.assert_array_equal(x["token_ids"][0], sequence[:-1])
    np.testing.assert_array_equal(y[0], sequence[1:])
    np.testing.assert_array_equal(weights[0], [0] * (keep - 1) + [1] * (len(response) + 1))
    assert model.preprocessor.truncation_counts == {
        "examples": 2, "prompts_truncated": 1, "dropped": 0}

    # A response that cannot fit beside one prompt token is left out, weight 0.
    x, y, weights = model.preprocessor(_pairs(["Hello"], [" the cat sat on the mat the cat"]))
    assert float(np.sum(weights)) == 0
    assert model.preprocessor.truncation_counts == {
        "examples": 3, "prompts_truncated": 1, "dropped": 1}
    model.preprocessor.reset_counts()
    assert model.preprocessor.truncation_counts["examples"] == 0


def test_the_tf_data_path_packs_as_the_eager_path_and_counts(gguf_path):
    model = _model(gguf_path, pad_to_multiple_of=4)
    eager = model.preprocessor(_pairs())
    dataset = tf.data.Dataset.from_tensor_slices(_pairs()).batch(2).map(model.preprocessor)
    (x, y, weights), = list(dataset)
    assert x["token_ids"].shape == (2, 8)  # Longest example 8 tokens: 7 inputs, padded to 8.
    for graph, eager_value in zip(tf.nest.flatten((x, y, weights)), tf.nest.flatten(eager)):
        np.testing.assert_array_equal(graph, eager_value)
    assert model.preprocessor.truncation_counts["examples"] == 4
    # Mapped before batching, one example at a time (a fixed width to batch them).
    fixed = _model(gguf_path)
    unbatched = tf.data.Dataset.from_tensor_slices(_pairs()).map(fixed.preprocessor).batch(2)
    for a, b in zip(tf.nest.flatten(next(iter(unbatched))),
                    tf.nest.flatten(fixed.preprocessor(_pairs()))):
        np.testing.assert_array_equal(a, b)


def test_strings_train_every_token_and_packed_batches_pass_through(gguf_path):
    model = _model(gguf_path)
    plain = ChatCausalLMPreprocessor(model.preprocessor.tokenizer, sequence_length=16)
    for ours, theirs in zip(tf.nest.flatten(model.preprocessor(["Hello world the cat"])),
                            tf.nest.flatten(plain(["Hello world the cat"]))):
        np.testing.assert_array_equal(ours, theirs)
    packed = model.preprocessor(_pairs())
    again = model.preprocessor(*packed)
    for a, b in zip(tf.nest.flatten(packed), tf.nest.flatten(again)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(KftError, match="'prompt' and 'response'"):
        model.preprocessor({"question": ["Hi"], "answer": ["Hello"]})


def test_the_loss_is_the_mean_over_response_tokens_computed_by_hand(gguf_path):
    model = _model(gguf_path)
    x, y, weights = (np.asarray(v) if not isinstance(v, dict) else v
                     for v in model.preprocessor(_pairs()))
    nll = _nll(model, x, y)
    by_hand = float((nll * weights).sum() / weights.sum())
    dataset = tf.data.Dataset.from_tensor_slices(_pairs()).batch(2)

    # Eager steps: tracing the tiny model's step costs more than running it.
    model.compile(loss=response_loss(), weighted_metrics=[], run_eagerly=True)
    assert model.evaluate(dataset, verbose=0) == pytest.approx(by_hand, rel=1e-5)
    # keras-hub's default loss divides by every position of the batch.
    logits = model(x)
    default = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits, weights)
    assert float(default) == pytest.approx(float((nll * weights).sum() / weights.size), rel=1e-5)

    # A prompt position's label carries no weight: changing it changes nothing ...
    loss = response_loss()
    changed = y.copy()
    changed[0, 0] = (changed[0, 0] + 7) % 300
    assert float(loss(changed, logits, weights)) == pytest.approx(float(loss(y, logits, weights)))
    # ... unless the prompt is trained on too.
    on_prompt = _model(gguf_path, train_on_prompt=True).preprocessor(_pairs())[2]
    assert float(loss(changed, logits, on_prompt)) != pytest.approx(
        float(loss(y, logits, on_prompt)))


def test_fit_on_a_dataset_of_dicts_changes_the_weights_and_generate_still_works(gguf_path):
    model = kft.text.causal_lm(gguf_path, sequence_length=16)
    model.compile(sampler="greedy", run_eagerly=True)
    before_generate = model.generate(PROMPTS, max_length=12)
    use_instruction_preprocessor(model)
    model.compile(sampler="greedy", run_eagerly=True)
    assert model.generate(PROMPTS, max_length=12) == before_generate
    assert isinstance(model.generate("Hello", max_length=8), str)

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=response_loss(), run_eagerly=True)
    before = [np.array(v) for v in model.trainable_variables]
    history = model.fit(tf.data.Dataset.from_tensor_slices(_pairs()).batch(2), epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"][0])
    changed = [not np.allclose(b, np.array(v)) for b, v in zip(before, model.trainable_variables)]
    assert all(changed)


def test_the_chat_template_is_applied_by_the_preprocessor_too(gguf_path):
    model = _model(gguf_path, sequence_length=64, apply_chat_template=True,
                   system_prompt="Be brief.")
    x, _, weights = model.preprocessor(_pairs(PROMPTS[:1], RESPONSES[:1]))
    prompt = kft.text.format_chat(model, [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": PROMPTS[0]}])
    # The tiny GGUF's template has no generation prompt: the response's turn
    # opening is part of the response.
    full = kft.text.format_chat(model, [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": PROMPTS[0]},
                                        {"role": "assistant", "content": RESPONSES[0]}])
    sequence = _ids(model, full.rstrip())
    np.testing.assert_array_equal(x["token_ids"][0, :len(sequence) - 1], sequence[:-1])
    assert sequence[-1] == END
    assert float(np.sum(weights)) == len(sequence) - len(_ids(model, prompt))
    generated = model.preprocessor.generate_preprocess(["Hi"])
    assert _ids(model, kft.text.format_chat(model, [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        add_generation_prompt=True)) == [
        int(i) for i, m in zip(generated["token_ids"][0], generated["padding_mask"][0]) if m]
    model.compile(sampler="greedy", run_eagerly=True)
    assert isinstance(model.generate("Hi", max_length=40, strip_prompt=True), str)


def test_a_keras_file_round_trip_keeps_the_preprocessor(gguf_path, tmp_path):
    model = _model(gguf_path, train_on_prompt=True, pad_to_multiple_of=4, system_prompt="S")
    path = str(tmp_path / "instructed.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.preprocessor) is InstructionCausalLMPreprocessor
    config = loaded.preprocessor.get_config()
    assert (config["train_on_prompt"], config["pad_to_multiple_of"], config["system_prompt"]) == (
        True, 4, "S")
    for a, b in zip(tf.nest.flatten(model.preprocessor(_pairs())),
                    tf.nest.flatten(loaded.preprocessor(_pairs()))):
        np.testing.assert_array_equal(a, b)
    x = model.preprocessor(_pairs())[0]
    np.testing.assert_allclose(model(x), loaded(x), atol=1e-6)
    assert loaded.preprocessor.tokenizer.chat_template == model.preprocessor.chat_template


def test_bad_options_are_kft_errors(gguf_path):
    model = kft.text.causal_lm(gguf_path, sequence_length=16)
    with pytest.raises(KftError, match="pad_to_multiple_of"):
        use_instruction_preprocessor(model, pad_to_multiple_of=0)
    with pytest.raises(KftError, match="no start token"):
        InstructionCausalLMPreprocessor(_NoStart(), add_start_token=True)
    model.preprocessor = None
    with pytest.raises(KftError, match="no preprocessor"):
        use_instruction_preprocessor(model)


class _NoStart:
    start_token_id = None
