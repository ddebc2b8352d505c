"""The real SmolLM2-135M-Instruct on chatterbot's tech-support pairs, loss on the answers only."""

import numpy as np
import pytest

import kft
from kft.data import instructions
from kft.internal import assets
from kft.models.instruction_preprocessor import use_instruction_preprocessor
from tests.models.test_chat_format import SMOLLM2_TEMPLATE


@pytest.mark.slow
def test_smollm2_formats_and_weighs_chatterbot_pairs_with_its_own_template():
    model = kft.text.causal_lm("smollm2-135m-instruct", sequence_length=64)
    assert model.preprocessor.chat_template == SMOLLM2_TEMPLATE
    use_instruction_preprocessor(model)
    tokenizer = model.preprocessor.tokenizer
    corpus = assets.pypi_package("chatterbot-corpus", "1.3.3") / "chatterbot_corpus" / "data"
    data = instructions.from_chatterbot(corpus / "english" / "tech_support.yml",
                                        validation_split=0, test_split=0)
    prompts, responses = data.formatted(model)
    assert prompts[0].endswith(f"<|im_start|>user\n{data.train[0].prompt}<|im_end|>\n"
                               "<|im_start|>assistant\n")
    assert responses[0] == data.train[0].response + "<|im_end|>"

    x, y, weights = next(iter(data.batches(model, batch_size=10, shuffle=False)))
    weights = np.asarray(weights)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        p, r = [int(i) for i in tokenizer(prompt)], [int(i) for i in tokenizer(response)]
        assert r[-1] == tokenizer.end_of_turn_token_id  # <|im_end|>, once.
        np.testing.assert_array_equal(np.asarray(x["token_ids"])[row, :len(p) + len(r)], p + r)
        assert np.flatnonzero(weights[row]).tolist() == list(range(len(p) - 1, len(p) + len(r) - 1))

    # The loss on the answers against the loss on every token (train_on_prompt).
    logits = np.asarray(model(x), "float64")
    top = logits.max(-1, keepdims=True)
    log_probabilities = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probabilities, np.asarray(y)[..., None], -1)[..., 0]
    on_prompt = use_instruction_preprocessor(model, train_on_prompt=True, pad_to_multiple_of=8)
    everywhere = np.asarray(on_prompt.preprocessor({"prompt": prompts, "response": responses})[2])
    answers = float((nll * weights).sum() / weights.sum())
    everything = float((nll * everywhere).sum() / everywhere.sum())
    print(f"SmolLM2 on the 10 distinct tech-support pairs: {answers:.2f} nats per answer token "
          f"({int(weights.sum())} tokens), {everything:.2f} per token of the whole conversation "
          f"({int(everywhere.sum())} tokens)")
    assert np.all(everywhere >= weights) and everywhere.sum() > 3 * weights.sum()
    assert 0 < answers < 5 and abs(everything - answers) > 0.1
