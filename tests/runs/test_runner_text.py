"""A text recipe end to end: baseline, LoRA stage, reports, reload, serving export."""

import json
import random

import numpy as np
import pytest
import tensorflow as tf

import kft
from kft.runs import recipe as recipe_module
from kft.runs import runner
from tests.helpers.process import REPO

POSITIVE = ["good", "great", "loved", "excellent", "fine"]
NEGATIVE = ["bad", "awful", "hated", "terrible", "boring"]
SUBJECTS = ["the movie", "the film", "the food", "the service", "the phone", "it"]


def _sentences(count, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        words = POSITIVE if i % 2 else NEGATIVE
        rows.append((f"{rng.choice(SUBJECTS)} was {rng.choice(['', 'very ', 'really '])}"
                     f"{rng.choice(words)} .", "pos" if i % 2 else "neg"))
    return rows


@pytest.fixture
def reviews_csv(run_in_tmp):
    path = run_in_tmp / "reviews.csv"
    path.write_text("text,label\n" + "\n".join(f"{t},{l}" for t, l in _sentences(96)) + "\n")
    return path


def test_lora_text_run_reports_baseline_and_exports(reviews_csv, tiny_bert_dir, run_in_tmp):
    recipe = recipe_module.load(REPO / "tests" / "helpers" / "recipes" / "tiny_text.py")
    result = runner.run(recipe, overrides={"data": str(reviews_csv), "model": tiny_bert_dir,
                                           "epochs": 3, "lr": 0.02})
    run_dir = result.run_dir.path
    metrics = json.loads((run_dir / "metrics.json").read_text())

    baseline = json.loads((run_dir / "baseline.json").read_text())
    assert baseline["kind"] == "linear_probe"
    assert {"validation", "test"} <= set(baseline)
    assert metrics["baseline"]["test"]["accuracy"] == baseline["test"]["accuracy"]
    evaluation = metrics["evaluation"]
    assert set(evaluation) == {"validation", "test"}
    assert set(evaluation["test"]["per_class"]) == {"neg", "pos"}
    assert sum(map(sum, evaluation["test"]["confusion_matrix"])) == 24
    assert metrics["final"]["test_accuracy"] == pytest.approx(evaluation["test"]["accuracy"])
    # The tiny random encoder cannot learn much (MiniLM's test checks real
    # learning); the adapters and head still train it downhill.
    history = kft.runs.history.read_history(run_dir / "history.csv")
    assert history[-1]["loss"] < history[0]["loss"]
    assert (run_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    texts = np.array(["the food was awful .", "it was really great ."])
    expected = result.model.predict(texts, verbose=0)
    reloaded = kft.peft.load_model(run_dir / "model.keras")
    np.testing.assert_allclose(reloaded.predict(texts, verbose=0), expected, atol=1e-6)

    version = kft.export.export_run(run_dir, run_in_tmp / "serving")
    served = tf.saved_model.load(str(version)).signatures["serving_default"]
    outputs = served(text=tf.constant(texts))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-5)
    names = np.array(["neg", "pos"])[expected.argmax(axis=-1)].tolist()
    assert [label.decode() for label in outputs["label"].numpy()] == names


def test_class_weights_reach_fit(reviews_csv, tiny_bert_dir, monkeypatch):
    import keras

    seen = {}
    fit = keras.Model.fit

    def recording_fit(self, *args, **kwargs):
        seen["class_weight"] = kwargs.get("class_weight")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", recording_fit)
    recipe = recipe_module.load(REPO / "tests" / "helpers" / "recipes" / "tiny_text.py")
    runner.run(recipe, overrides={"data": str(reviews_csv), "model": tiny_bert_dir, "epochs": 1,
                                  "balance": "class_weight", "baseline": False,
                                  "method": "head"})
    assert seen["class_weight"] == pytest.approx({0: 1.0, 1: 1.0})
