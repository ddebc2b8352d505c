"""kft tune: searches run the whole recipe per trial, record failures, resume, retrain."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kft.cli import main
from kft.data import images
from kft.errors import KftError
from kft.runs.recipe import Recipe, Stage
from kft.tuning import Budget, Choice, Int, LogUniform, Uniform
from kft.tuning.tuner import tune
from tests.helpers.tiny_models import random_images, tiny_image_model

from tests.helpers.process import REPO
TINY_SEARCH = str(REPO / "tests" / "helpers" / "recipes" / "tiny_search.py")


def _recipe(search, model=None, **params):
    x, y = random_images(48)
    return Recipe(
        name="tiny",
        params={"seed": 0, "lr": 0.05, "unfreeze": "groups:2", "finetune_epochs": 1,
                "finetune_lr": 0.01, **params},
        data=lambda p: images.from_arrays(x, y, batch_size=8, seed=p.seed),
        model=model or (lambda p, data: tiny_image_model(len(data.class_names))),
        stages=lambda p: [
            Stage("head", epochs=1, train="head", lr=p.lr),
            Stage("finetune", epochs=p.finetune_epochs, train=p.unfreeze, lr=p.finetune_lr),
        ],
        search=search,
    )


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _run_params(tune_dir, row):
    return json.loads((tune_dir / row["run_dir"] / "params.json").read_text())


def test_search_space_is_checked_against_the_recipe_params():
    with pytest.raises(KftError, match=r"search names 'learning_rate', which is not one of its params"):
        _recipe({"learning_rate": LogUniform(1e-4, 1e-2)})
    with pytest.raises(KftError, match=r"search\['unfreeze'\].*yields float values.*is a str"):
        _recipe({"unfreeze": Uniform(0.1, 0.9)})
    with pytest.raises(KftError, match=r"Choice values must all be of one type"):
        _recipe({"unfreeze": Choice("all", None)})
    with pytest.raises(KftError, match=r"LogUniform needs low > 0"):
        _recipe({"lr": LogUniform(0.0, 1.0)})
    with pytest.raises(KftError, match=r"only one param can be the Budget"):
        _recipe({"finetune_epochs": Budget(), "seed": Budget()})
    # An int param takes Int and integer choices; a float param takes either.
    _recipe({"finetune_epochs": Int(1, 3), "lr": Choice(1, 2), "seed": Choice(0, 1)})


def test_hyperband_without_a_budget_or_searching_a_fixed_param_fails_before_any_trial(run_in_tmp):
    recipe = _recipe({"lr": LogUniform(1e-3, 1e-1)})
    with pytest.raises(KftError, match=r"Hyperband gives each trial an epoch budget.*Budget\(\)"):
        tune(recipe, trials=2, tuner="hyperband")
    with pytest.raises(KftError, match=r"lr is searched, so --set cannot fix it"):
        tune(recipe, trials=2, overrides=["lr=0.3"])
    with pytest.raises(KftError, match=r"--isolate runs each trial as `kft run RECIPE_FILE`"):
        tune(recipe, trials=2, isolate=True)
    assert not (run_in_tmp / "runs").exists() or not any((run_in_tmp / "runs").iterdir())


def test_a_search_runs_whole_plans_with_the_trial_values_and_resumes(run_in_tmp):
    recipe = _recipe({"lr": LogUniform(1e-3, 1e-1), "unfreeze": Choice("groups:1", "all")})
    first = tune(recipe, trials=1, seed=1, overrides=["finetune_lr=0.02"])
    tune_dir = first.tune_dir.path
    (first_run,) = (tune_dir / "trials" / "0").glob("tiny-*")
    first_model = (first_run / "model.keras").read_bytes()

    second = tune(recipe, trials=2, resume=tune_dir)

    # Only the new trial ran: trial 0 kept its one run directory, untouched.
    assert list((tune_dir / "trials" / "0").glob("tiny-*")) == [first_run]
    assert (first_run / "model.keras").read_bytes() == first_model
    rows = _csv(tune_dir / "trials.csv")
    assert [row["trial"] for row in rows] == ["0", "1"]
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert rows[0]["lr"] != rows[1]["lr"]
    for row in rows:
        params = _run_params(tune_dir, row)
        # The trial's values and the fixed --set reached the run...
        assert repr(params["lr"]) == row["lr"] and params["unfreeze"] == row["unfreeze"]
        assert params["finetune_lr"] == 0.02
        # ...and its whole staged plan ran.
        with open(tune_dir / row["run_dir"] / "history.csv") as handle:
            stages = [line["stage"] for line in csv.DictReader(handle)]
        assert stages == ["head", "finetune"]
        # The objective is the best epoch's validation accuracy.
        with open(tune_dir / row["run_dir"] / "history.csv") as handle:
            best = max(float(line["val_accuracy"]) for line in csv.DictReader(handle))
        assert float(row["val_accuracy"]) == pytest.approx(best)

    best_row = max(rows, key=lambda row: float(row["val_accuracy"]))
    best_params = json.loads((tune_dir / "best_params.json").read_text())
    assert best_params == {**{key: _run_params(tune_dir, best_row)[key]
                              for key in ("lr", "unfreeze")}, "finetune_lr": 0.02}
    assert second.best_params == best_params
    assert (tune_dir / "trials.png").stat().st_size > 0


def test_a_failing_trial_is_recorded_and_hyperband_goes_on_with_budgeted_trials(run_in_tmp):
    calls = []

    def model(p, data):
        calls.append(p.lr)
        if len(calls) == 1:
            raise RuntimeError("the first model will not build")
        return tiny_image_model(len(data.class_names))

    recipe = _recipe({"lr": LogUniform(1e-3, 1e-1), "finetune_epochs": Budget()},
                     model=model, finetune_epochs=3)
    result = tune(recipe, trials=2, tuner="hyperband", seed=1)

    rows = _csv(result.tune_dir.path / "trials.csv")
    assert [row["status"] for row in rows] == ["failed", "completed"]
    # Where the recipe raised, as `kft run` reports it.
    assert rows[0]["message"].startswith(f"KftError: {__file__}, line ")
    assert ("in model: the recipe's model() raised RuntimeError: the first model will not "
            "build") in rows[0]["message"]
    assert rows[0]["val_accuracy"] == ""
    assert result.best.trial == "1"
    # Hyperband (at most the param's 3 epochs, factor 3) opens with 1-epoch trials.
    assert [row["finetune_epochs"] for row in rows] == ["1", "1"]
    params = _run_params(result.tune_dir.path, rows[1])
    assert (params["lr"], params["finetune_epochs"]) == (calls[1], 1)
    with open(result.tune_dir.path / rows[1]["run_dir"] / "history.csv") as handle:
        assert [line["stage"] for line in csv.DictReader(handle)] == ["head", "finetune"]
    # The best params leave the budget out: a retrained best gets it in full.
    assert result.best_params == {"lr": calls[1]}


def test_a_diverged_trial_counts_its_finite_epochs_or_fails(run_in_tmp):
    late = tune(_recipe({"finetune_lr": Choice(1e30)}, finetune_epochs=2), trials=1, seed=1)
    (row,) = _csv(late.tune_dir.path / "trials.csv")
    assert row["status"] == "completed"
    with open(late.tune_dir.path / row["run_dir"] / "history.csv") as handle:
        assert [line["stage"] for line in csv.DictReader(handle)] == ["head"]
    assert "TrainingDiverged" in json.loads(
        (late.tune_dir.path / row["run_dir"] / "state.json").read_text())["error_type"]

    at_once = tune(_recipe({"lr": Choice(1e38)}), trials=1, seed=1, output="early")
    (row,) = _csv(at_once.tune_dir.path / "trials.csv")
    assert row["status"] == "failed"
    assert "the loss became inf in stage 'head', epoch 1" in row["message"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("shades")
    rng = np.random.default_rng(0)
    for name, base in (("dark", 40), ("light", 200)):
        (root / name).mkdir()
        for index in range(8):
            pixels = np.clip(base + rng.integers(-30, 30, (16, 16, 3)), 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def test_kft_info_shows_the_search_space(capsys):
    main.main(["info", TINY_SEARCH, "--params-only"], standalone_mode=False)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == "lr" and line.endswith("kft tune: LogUniform(low=0.01, high=0.1)")
               for line in lines)
    assert any(line.split()[0] == "finetune_epochs" and line.endswith("kft tune: Budget(max=None)")
               for line in lines)


def test_run_params_file_applies_before_set_and_rejects_unknown_keys(run_in_tmp, image_folder):
    params_file = run_in_tmp / "best_params.json"
    params_file.write_text(json.dumps({"lr": 0.02, "finetune_lr": 0.003, "head_epochs": 1}))
    main.main(["run", TINY_SEARCH, "--data", str(image_folder), "--params", str(params_file),
               "--set", "finetune_lr=0.004", "--set", "finetune_epochs=1", "--output", "out"],
              standalone_mode=False)
    (run_dir,) = (run_in_tmp / "out").iterdir()
    params = json.loads((run_dir / "params.json").read_text())
    assert (params["lr"], params["finetune_lr"], params["head_epochs"]) == (0.02, 0.004, 1)

    params_file.write_text(json.dumps({"lr": 0.02, "learning_rate": 0.1}))
    with pytest.raises(KftError, match=r"sets 'learning_rate', not params of recipe 'tiny_search'"):
        main.main(["run", TINY_SEARCH, "--params", str(params_file)], standalone_mode=False)


def _kft(*args, cwd, env=None):
    environment = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, "-m", "kft", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_cli_search_killed_mid_trial_resumes_that_trial_and_retrains_the_best(
        tmp_path, image_folder):
    common = ["--data", str(image_folder), "--set", "head_epochs=1", "--set", "finetune_epochs=1"]
    # Killed as epoch 1 begins: at the stage boundary, so the resumed trial
    # must compile the finetune stage afresh, not reuse the head's optimizer.
    killed = _kft("tune", TINY_SEARCH, "--trials", "2", "--output", "out", *common,
                  cwd=tmp_path, env={"KFT_TEST_KILL_AT_EPOCH": "1"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    (tune_dir,) = (tmp_path / "out").iterdir()

    # Isolated: each trial is a `kft run --resume` or `kft run --params` process.
    resumed = _kft("tune", TINY_SEARCH, "--resume", str(tune_dir), "--trials", "2",
                   "--retrain-best", "--isolate", "--output", "out", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # The killed trial continued from its checkpoint in its own run directory.
    assert "Resuming" in resumed.stdout and "after epoch 1" in resumed.stdout
    (trial_run,) = (tune_dir / "trials" / "0").glob("tiny_search-*")
    with open(trial_run / "history.csv") as handle:
        assert [row["stage"] for row in csv.DictReader(handle)] == ["head", "finetune"]
    rows = _csv(tune_dir / "trials.csv")
    assert [row["status"] for row in rows] == ["completed", "completed"]
    assert _run_params(tune_dir, rows[1])["finetune_lr"] == float(rows[1]["finetune_lr"])
    assert "Trials" in resumed.stdout and "val_accuracy" in resumed.stdout

    best_params = json.loads((tune_dir / "best_params.json").read_text())
    (retrained,) = [path for path in (tmp_path / "out").iterdir() if path != tune_dir]
    assert f"Best configuration retrained: out/{retrained.name}" in resumed.stdout
    assert (retrained / "model.keras").is_file()
    params = json.loads((retrained / "params.json").read_text())
    assert {key: params[key] for key in best_params} == best_params


def test_bayesian_search_fits_its_model_after_the_initial_random_trials(run_in_tmp):
    # One searched param: keras-tuner draws 3 initial points at random, so the
    # fourth trial's value comes from the Gaussian process (scikit-learn).
    recipe = _recipe({"lr": LogUniform(1e-3, 1e-1)})
    result = tune(recipe, trials=4, tuner="bayesian", seed=1)
    rows = _csv(result.tune_dir.path / "trials.csv")
    assert [row["status"] for row in rows] == ["completed"] * 4
    values = [float(row["lr"]) for row in rows]
    assert len(set(values)) == 4 and all(1e-3 <= value <= 1e-1 for value in values)
    assert result.best.score == max(float(row["val_accuracy"]) for row in rows)
    assert result.best_params == {"lr": result.best.values["lr"]}
