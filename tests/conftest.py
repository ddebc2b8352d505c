"""Shared fixtures: quiet TensorFlow, fresh Keras names, a tiny BERT preset."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import pytest


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny random keras-hub BERT preset folder (see tests/helpers/text_models.py)."""
    from tests.helpers.text_models import write_tiny_bert_preset

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
