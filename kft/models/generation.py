"""Answers from a causal LM for a list of prompts (`kft.text.generate`).

keras-hub's `CausalLM.generate` runs one batch at one `max_length` and traces
its generation loop for every new `(batch, max_length)` shape: on two CPU
cores tracing SmolLM2-135M's loop takes about a minute, generating a batch
of 16 answers about ten seconds. So `generate` sorts the prompts by length
(a batch's loop starts at its shortest prompt), cuts them into batches of
one size (the last one filled up with copies) and uses one `max_length` for
the whole call: one trace per call, and none on the next call with the same
shapes. Each answer keeps its first `max_tokens` new tokens, as a batch's
longer budget lets its shorter prompts run on.

Streaming is not offered: keras-hub's generation loop is one traced
function with no per-token callback, and a Python loop per token would be
several times slower on CPU.
"""

import math
import numbers

import numpy as np

from kft.errors import KftError
from kft.internal.checks import is_number
from kft.models import chat_format

_LENGTH_STEP = 16


def generate(model, prompts, max_tokens=64, temperature=None, top_p=None, top_k=None,
             seed=None, chat=False, system_prompt=None, batch_size=16):
    """Generates an answer to each prompt.

    Greedy by default; `temperature`, `top_p` or `top_k` sample instead.
    Generation stops at the tokenizer's end token and its end-of-turn token
    (`<|im_end|>` for ChatML models); special tokens are left out of the
    answers.

    Args:
        model: a keras-hub `CausalLM` with its preprocessor (what
            `kft.text.causal_lm` returns, or a run's model).
        prompts: a string or a list of strings.
        max_tokens: at most this many new tokens per answer.
        temperature: sampling temperature (`None` or 0: greedy).
        top_p: nucleus sampling: keep the smallest set of tokens whose
            probability reaches `top_p` (with `top_k`, among the top k).
        top_k: sample among the `top_k` most likely tokens.
        seed: seeds the sampling.
        chat: the prompts are user messages: render each with the model's
            chat template (`kft.text.format_chat`) and an opened assistant
            turn. `False`: give them to the model as they are.
        system_prompt: with `chat`, a system message put first.
        batch_size: prompts generated together.

    Returns:
        A list of answers (one string for a string prompt), without the prompts.

    Raises:
        KftError: the model cannot generate, an argument is out of range, or
            a prompt and `max_tokens` exceed the model's longest sequence.

    Example:
    ```python
    model = kft.text.causal_lm("smollm2-135m-instruct", sequence_length=128)
    kft.text.generate(model, ["What is the capital of France?"], chat=True, max_tokens=16)
    # ['The capital of France is Paris.']
    ```
    """
    _check_model(model)
    single = isinstance(prompts, str)
    prompts = [prompts] if single else list(prompts)
    _check_options(prompts, max_tokens, temperature, top_p, top_k, batch_size)
    if not prompts:
        return []
    if chat:
        prompts = [_chat_prompt(model, prompt, system_prompt) for prompt in prompts]
    tokenizer = model.preprocessor.tokenizer
    lengths = [_token_count(tokenizer, prompt) for prompt in prompts]
    # The preprocessor adds a start token where the model uses one.
    longest = max(lengths) + 1
    max_length = _LENGTH_STEP * math.ceil((longest + int(max_tokens)) / _LENGTH_STEP)
    max_length = _check_length(model, longest, int(max_tokens), max_length)
    _use_sampler(model, temperature, top_p, top_k, seed)

    order = np.argsort(lengths, kind="stable")
    batch_size = min(int(batch_size), len(prompts))
    answers = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = list(order[start:start + batch_size])
        batch = [prompts[i] for i in rows]
        # One batch shape for the whole call: one trace of the generation loop.
        batch += [batch[-1]] * (batch_size - len(batch))
        for row, answer in zip(rows, _generate_batch(model, batch, max_length, int(max_tokens))):
            answers[row] = answer
    return answers[0] if single else answers


def _check_model(model):
    preprocessor = getattr(model, "preprocessor", None)
    if not callable(getattr(model, "generate", None)) or preprocessor is None \
            or getattr(preprocessor, "tokenizer", None) is None:
        raise KftError(
            f"A {type(model).__name__} cannot generate text: use a causal language model "
            "with its preprocessor (kft.text.causal_lm, or a causal-LM run's model).")


def _check_options(prompts, max_tokens, temperature, top_p, top_k, batch_size):
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise KftError(f"Prompt {index} is a {type(prompt).__name__}, not a string.")
    problems = [
        (not _whole(max_tokens), f"max_tokens must be a whole number >= 1, got {max_tokens!r}."),
        (temperature is not None and not (is_number(temperature) and temperature >= 0),
         f"temperature must be a number >= 0, got {temperature!r}."),
        (top_p is not None and not (is_number(top_p) and 0 < top_p <= 1),
         f"top_p must be in (0, 1], got {top_p!r}."),
        (top_k is not None and not _whole(top_k),
         f"top_k must be a whole number >= 1, got {top_k!r}."),
        (not _whole(batch_size), f"batch_size must be a whole number >= 1, got {batch_size!r}."),
    ]
    for failed, message in problems:
        if failed:
            raise KftError(message)


def _whole(value):
    """A whole number >= 1, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _chat_prompt(model, prompt, system_prompt):
    return chat_format.format_chat(model, chat_format.pair_messages(prompt, None, system_prompt),
                                   add_generation_prompt=True)


def _token_count(tokenizer, text):
    return int(np.asarray(tokenizer(text)).shape[0])


def _check_length(model, longest, max_tokens, max_length):
    limit = getattr(getattr(model, "backbone", None), "max_sequence_length", None)
    if limit and longest + max_tokens > limit:
        raise KftError(
            f"The longest prompt has {longest} tokens; with max_tokens={max_tokens} that is "
            f"more than the model's {limit} positions: shorten it or lower max_tokens.")
    if limit:
        # Rounding up stays within the positions the model has.
        max_length = min(max_length, limit)
    return max_length


def _use_sampler(model, temperature, top_p, top_k, seed):
    """Sets the model's sampler; a changed one drops the traced generation loop."""
    import keras_hub

    if not temperature and top_p is None and top_k is None:
        sampler = keras_hub.samplers.GreedySampler()
    else:
        temperature = float(temperature or 1.0)
        if top_p is not None:
            sampler = keras_hub.samplers.TopPSampler(p=float(top_p), k=top_k, seed=seed,
                                                     temperature=temperature)
        elif top_k is not None:
            sampler = keras_hub.samplers.TopKSampler(k=int(top_k), seed=seed,
                                                     temperature=temperature)
        else:
            sampler = keras_hub.samplers.RandomSampler(seed=seed, temperature=temperature)
    old = getattr(model, "sampler", None)
    if old is not None and type(old) is type(sampler) and old.get_config() == sampler.get_config():
        return
    model.sampler = sampler
    model.generate_function = None


def _generate_batch(model, prompts, max_length, max_tokens):
    """keras-hub's generation loop on one batch; each answer's first `max_tokens` new tokens.

    `CausalLM.generate` with `strip_prompt=True`, except that the answers
    are cut on token ids, not on their text (a model's bytes need not be
    valid UTF-8 until the answer ends).
    """
    import tensorflow as tf

    preprocessor, tokenizer = model.preprocessor, model.preprocessor.tokenizer
    stop_ids = [tokenizer.end_token_id]
    if getattr(tokenizer, "end_token2_id", None) is not None:
        stop_ids.append(tokenizer.end_token2_id)
    inputs = preprocessor.generate_preprocess(tf.constant(prompts), sequence_length=max_length)
    outputs = model.make_generate_function()(inputs, stop_token_ids=tuple(stop_ids))
    prompt_lengths = np.asarray(inputs["padding_mask"]).sum(axis=1)
    token_ids = np.asarray(outputs["token_ids"])
    mask = np.asarray(outputs["padding_mask"]).astype(bool)
    special = set(int(i) for i in getattr(tokenizer, "special_token_ids", ()) or ())
    answers = []
    for ids, keep, start in zip(token_ids, mask, prompt_lengths):
        new = [int(i) for i, k in zip(ids[start:start + max_tokens], keep[start:start + max_tokens])
               if k and int(i) not in special]
        answers.append(_text(tokenizer.detokenize(np.asarray(new, "int32"))) if new else "")
    return answers


def _text(value):
    value = value.numpy() if hasattr(value, "numpy") else value
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
