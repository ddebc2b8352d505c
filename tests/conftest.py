"""Shared fixtures: a tiny image model in kft's layout, and quiet TensorFlow."""

import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest


REPO = pathlib.Path(__file__).resolve().parents[1]


def run_script(source, timeout=300):
    """Runs Python `source` in a fresh process from the repository root.

    For checks that must configure TensorFlow before it starts (two logical
    CPUs for MirroredStrategy), leaving the test process untouched. Fails the
    test with the script's output when it exits non-zero.

    Returns:
        The `subprocess.CompletedProcess`.
    """
    result = subprocess.run(
        [sys.executable, "-c", source], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                              # Scripts that chdir still import kft and tests from here.
                              "PYTHONPATH": os.pathsep.join(
                                  filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def tiny_image_model(num_classes=3, image_size=16, name="tiny"):
    """A model with kft's layout: preprocess, a nested conv+BN backbone, head_*."""
    from kft.layers.image_preprocessing import ImagePreprocessing

    backbone_in = keras.Input((image_size, image_size, 3))
    x = backbone_in
    for block in (1, 2):
        x = keras.layers.Conv2D(4 * block, 3, padding="same", name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
    backbone = keras.Model(backbone_in, x, name="backbone")

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = ImagePreprocessing(mode="tf", name="preprocess")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head_dense")(x)
    return keras.Model(inputs, outputs, name=name)


def random_images(count, image_size=16, num_classes=3, seed=0):
    """Images whose mean brightness encodes the class, so they are learnable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    base = (labels * (200 // max(num_classes - 1, 1)))[:, None, None, None]
    noise = rng.integers(0, 50, size=(count, image_size, image_size, 3))
    return np.clip(base + noise, 0, 255).astype("uint8"), labels.astype("int32")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random keras-hub BERT preset folder (see tests/text_models.py)."""
    from tests.text_models import write_tiny_bert_preset

    return write_tiny_bert_preset(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture
def run_in_tmp(tmp_path, monkeypatch):
    """Runs the test with tmp_path as working directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _fresh_keras_names():
    """Each test starts with Keras' automatic layer names unused.

    Keras numbers auto-named layers process-wide (`rescaling_1`,
    `bert_backbone_1`), so without this a test's layer paths would depend on
    which tests ran before it in the same worker.
    """
    keras.backend.clear_session()
    yield
