"""A stage's `regularize=` in a run: the penalty in the history, the model saved without it."""

import json

import keras
import numpy as np
import pytest

from kft import saving
from kft.data import images
from kft.regularizers import L2SP
from kft.runs import regularizing
from kft.runs import runner
from kft.runs.history import read_history
from kft.runs.recipe import Recipe, Stage
from kft.runs.run_directory import RunDirectory
from tests.helpers.process import run_script
from tests.helpers.tiny_models import random_images, tiny_image_model
from tests.training.test_distribute import TWO_CPUS


class _Snapshot(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = {v.path: keras.ops.convert_to_numpy(v).copy() for v in self.model.weights}


def _run(stages):
    # One batch per epoch: a stage's first epoch is its first step.
    x, y = random_images(8)
    return runner.run(verbose=True, recipe=Recipe(
        name="tiny",
        params={"seed": 0},
        data=lambda p: images.from_arrays(x, y, batch_size=8, seed=p.seed,
                                          validation=random_images(6, seed=1)),
        model=lambda p, data: tiny_image_model(len(data.class_names)),
        stages=lambda p: stages,
    ))


def test_l2sp_stages_log_their_penalty_and_the_model_saves_without_it(run_in_tmp, capsys):
    snapshot = _Snapshot()
    result = _run([
        # Head only: L2-SP is beta alone, and the head still trains on cached features.
        Stage("head", epochs=1, train="head", lr=0.05, regularize="l2sp:0.01,0.1"),
        Stage("plain", epochs=1, train="head", lr=0.05),
        Stage("finetune", epochs=2, train="head,name:block2_.*", lr=0.05,
              regularize="l2sp:0.5", callbacks=[snapshot]),
    ])
    printed = capsys.readouterr().out
    assert printed.count("backbone features computed once") == 2
    rows = read_history(result.run_dir.history)
    assert [row["stage"] for row in rows] == ["head", "plain", "finetune", "finetune"]
    penalties = [row["l2sp_penalty"] for row in rows]
    assert penalties[0] > 0 and penalties[1] is None
    # The pull towards the stage's start: nothing at its first step, then some.
    assert penalties[2] == 0.0 and penalties[3] > 0.0
    assert rows[2]["val_l2sp_penalty"] > 0.0
    stages = result.run_dir.read_json("state.json")["stages"]
    assert stages[2]["metrics"]["l2sp_penalty"] == penalties[3]
    assert (result.run_dir.path / "regularizers" / "stage-3.npz").is_file()
    # Frozen during the regularised stage: bit-identical.
    after = {v.path: keras.ops.convert_to_numpy(v) for v in result.model.weights}
    for path, value in snapshot.weights.items():
        if path.startswith("block1_"):
            assert np.array_equal(value, after[path]), path
    probe = random_images(4, seed=2)[0]
    for reloaded in (saving.load_model(result.run_dir.final_model),
                     keras.saving.load_model(result.run_dir.final_model)):
        np.testing.assert_allclose(reloaded.predict(probe, verbose=0),
                                   result.model.predict(probe, verbose=0), atol=1e-6)


def test_kl_turns_feature_caching_off(run_in_tmp, capsys):
    result = _run([Stage("head", epochs=1, train="head", lr=0.05, regularize="kl:0.1")])
    assert "backbone features computed once" not in capsys.readouterr().out
    row = read_history(result.run_dir.history)[0]
    assert row["kl_penalty"] is not None and row["val_kl_penalty"] is not None


def test_a_resumed_stage_compares_against_its_saved_start(tmp_path):
    run_dir = RunDirectory.create("tiny", tmp_path)
    model = tiny_image_model()
    first = regularizing.bind(L2SP(alpha=1.0, head=None), model, run_dir, 1, mid_stage=False)
    for variable in model.trainable_variables:
        variable.assign(variable * 1.5)
    moved = first.penalty(None, None)
    assert moved > 0
    resumed = regularizing.bind(L2SP(alpha=1.0, head=None), model, run_dir, 1, mid_stage=True)
    np.testing.assert_allclose(resumed.penalty(None, None), moved, rtol=1e-6)
    # At a stage's start (a resume at the boundary too) the start is now.
    fresh = regularizing.bind(L2SP(alpha=1.0, head=None), model, run_dir, 1, mid_stage=False)
    assert float(fresh.penalty(None, None)) == 0.0


@pytest.mark.slow
def test_two_replicas_regularise_like_one(tmp_path):
    # The penalty is part of the loss Keras scales by 1 / replicas: unscaled,
    # two replicas would pull twice as hard.
    completed = run_script(TWO_CPUS + f"""
os.chdir({str(tmp_path)!r})
import kft
from tests.helpers.recipes import tiny_distributed as tiny

def run(strategy, regularize):
    rec = kft.Recipe(
        name="tiny", params=dict(image_size=16, batch_size=8, seed=0), data=tiny._data,
        model=lambda p, data: tiny._model(len(data.class_names), p.image_size),
        stages=lambda p: [kft.Stage("all", epochs=2, train="all", lr=0.05, optimizer="sgd",
                                    regularize=regularize)])
    result = runner.run(rec, overrides=[f"strategy={{strategy}}"], output=strategy)
    return [w.tolist() for w in result.model.get_weights()], result.run_dir

out = {{"plain": run("one_device", None)[0]}}
for regularize in ("l2sp:5.0", "kl:5.0", "features:5.0"):
    one, _ = run("one_device", regularize)
    two, run_dir = run("mirrored", regularize)
    header = open(run_dir.history).readline().strip()
    out[regularize] = {{"one": one, "two": two, "header": header}}
print("RESULT " + json.dumps(out))
""", timeout=600)
    result = json.loads(completed.stdout.split("RESULT ")[-1])
    plain = result.pop("plain")
    for regularize, runs in result.items():
        name = regularize.split(":")[0]
        assert f"{name}_penalty" in runs["header"].split(","), regularize
        assert _max_difference(runs["one"], runs["two"]) < 1e-5, regularize
        # The penalty made a difference, so the comparison saw it.
        assert _max_difference(runs["one"], plain) > 1e-4, regularize


def _max_difference(first, second):
    return max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(first, second))
