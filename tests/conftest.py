"""Shared fixtures: quiet TensorFlow, fresh Keras names, a tiny BERT preset;
the slowest files first."""

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
    which tests ran before it in the same worker. Without Keras' forced
    `gc.collect()` (300 ms a test in a worker holding TensorFlow and keras-hub,
    five minutes over the suite): Python's own collector still runs.
    """
    keras.backend.clear_session(free_memory=False)
    yield


# The slowest files (seconds, full suite on 2 cores), run first: `make test`'s
# `-n 2 --dist loadfile --no-loadscope-reorder` hands out whole files in
# collection order (xdist's default order, most tests first, put the CLI files
# of few long tests last), and a long file handed out last runs alone while
# the other worker idles (8 of 29 minutes, once).
SLOWEST_FIRST = (
    "tests/runs/test_runner_causal_lm.py",  # 160 with the KL, precision and tune runs
    "tests/test_cli_failures.py",  # 150, in-process since 22ab81d
    "tests/export/test_serving_export.py",  # 140
    "tests/tuning/test_tuner.py",  # 137
    "tests/training/test_distribute.py",  # 130
    "tests/inference/test_cost.py",  # 125
    "tests/tracking/test_mlflow_tracker.py",  # 125
    "tests/test_cli.py",  # 100, in-process since 22ab81d
    "tests/inference/test_wise_ft.py",  # 89
    "tests/models/test_causal_lm_smollm2.py",  # 88
    "tests/runs/test_regularizing.py",  # 77
    "tests/peft/test_lora_minilm.py",  # 70
    "tests/models/test_instruction_preprocessor.py",  # 68
    "tests/models/test_dynamic_padding.py",  # 65
    "tests/runs/test_runner_text.py",  # 64
    "tests/freezing/test_gradual.py",  # 62
    "tests/runs/test_run_directory.py",  # 60
    "tests/runs/test_runner.py",  # 53
)


def pytest_collection_modifyitems(items):
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}
    # sorted is stable: within a file, and among the other files, order is kept.
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
