"""Hyperparameter search over a recipe's whole staged plan, with keras-tuner's oracles."""

import dataclasses
import gc
import json
import math
import subprocess
import sys
import time
from typing import Optional

import keras
import keras_tuner

from kft.console import Console
from kft.runs import runner
from kft.runs.monitor import monitor_mode
from kft.errors import KftError
from kft.errors import TrainingDiverged
from kft.runs.run_directory import RunDirectory
from kft.tuning import results, space
from kft.tuning.tune_directory import TuneDirectory

TUNERS = ("random", "bayesian", "hyperband")


@dataclasses.dataclass
class TuneResult:
    """What `tune` returns.

    Args:
        tune_dir: the `TuneDirectory`.
        trials: one `kft.tuning.results.TrialRow` per trial, in run order.
        best: the best completed trial's row, or `None`.
        best_params: the params `kft run --params` takes to repeat the best
            trial (fixed `--set`/`--data` values and its searched values).
        retrained: the `RunResult` of `retrain_best`, or `None`.
    """

    tune_dir: TuneDirectory
    trials: list
    best: Optional[results.TrialRow]
    best_params: Optional[dict]
    retrained: Optional[runner.RunResult] = None


class _StopSearch(keras_tuner.errors.FatalError):
    """Ends the search: a mistake that every trial would repeat."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


class RecipeTuner(keras_tuner.engine.base_tuner.BaseTuner):
    """A keras-tuner tuner whose trial is a whole `kft.runs.runner.run` of a recipe.

    Each trial runs every stage of the recipe with the trial's values for the
    searched params into `<tune dir>/trials/<id>/`, and reports the best value
    of the objective over its epochs. A trial that raises is recorded as
    failed with its message and the search goes on. Between trials Keras'
    global state is cleared; TensorFlow still keeps some of each trial's
    traced graphs (bench/tuning_memory.py measures it), so long searches
    should `isolate` their trials in processes of their own.

    Args:
        oracle: a keras-tuner oracle over the recipe's search space.
        recipe: the `kft.Recipe`; its `search` names the searched params.
        tune_dir: the `TuneDirectory`.
        fixed: params every trial sets (`--set`, `--data`), typed.
        objective: the metric name; `direction`: `"min"` or `"max"`.
        isolate: run each trial as a `kft run` process of its own, so all of
            its memory returns to the system when it ends.
        verbose: print each trial's progress and result.
    """

    def __init__(self, oracle, recipe, tune_dir, fixed, objective, direction, isolate=False,
                 verbose=True):
        self.recipe = recipe
        self.isolate = isolate
        self.console = Console(verbose)
        self.tune_dir = tune_dir
        self.fixed = dict(fixed)
        self.objective = objective
        self.direction = direction
        self.budget = space.budget_param(recipe.search)
        hyperband = isinstance(oracle, keras_tuner.oracles.HyperbandOracle)
        # The budget is a column only where Hyperband sets it.
        self.names = [name for name in recipe.search if name != self.budget or hyperband]
        super().__init__(oracle, directory=str(tune_dir.path),
                         project_name=tune_dir.keras_tuner_project, overwrite=False)
        # keras-tuner reloads a project only once the tuner has saved itself,
        # which it first does after a trial: save now, so a search killed in
        # its first trial resumes that trial with the same values.
        self.save()

    def trial_values(self, trial):
        """The params `trial` sets, typed like the recipe's defaults."""
        hp = trial.hyperparameters.values
        values = {}
        for name, declaration in self.recipe.search.items():
            if isinstance(declaration, space.Budget):
                if "tuner/epochs" in hp:
                    values[name] = int(hp["tuner/epochs"])
                continue
            if name in hp:
                values[name] = _typed(hp[name], self.recipe.defaults()[name])
        return values

    def run_trial(self, trial, *args, **kwargs):
        values = self.trial_values(trial)
        folder = self.tune_dir.trial_folder(trial.trial_id)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"trial": trial.trial_id, "values": values, "run_dir": None,
                  "seconds": None, "message": None}
        self.console.trial_started(trial.trial_id, values)
        began = time.time()
        try:
            run_dir = self._run(folder, values)
            record["run_dir"] = str(run_dir.path.relative_to(self.tune_dir.path))
            try:
                score = results.best_value(run_dir.history, self.objective, self.direction)
            except KftError as error:
                raise _StopSearch(error) from None
            if math.isnan(score):
                raise keras_tuner.errors.FailedTrialError(
                    f"{self.objective} is NaN in every epoch: training diverged")
            return {self.objective: score}
        except Exception as error:
            record["message"] = f"{type(error).__name__}: {error}"
            if record["run_dir"] is None:
                latest = _latest_run(folder)
                record["run_dir"] = latest and str(latest.relative_to(self.tune_dir.path))
            raise
        finally:
            record["seconds"] = time.time() - began
            self.tune_dir.write_json(folder / "record.json", record)
            self.release_memory()

    def release_memory(self):
        """Frees what a finished trial left in Keras' global state.

        Models, optimizers and traced functions of a trial stay reachable from
        Keras' global graph state until it is cleared (measured by
        bench/tuning_memory.py).
        """
        keras.backend.clear_session()
        gc.collect()

    def _run(self, folder, values):
        earlier = _latest_run(folder)
        if earlier is not None and (earlier / "metrics.json").is_file():
            self.console.trial_finished_earlier(earlier)
            return RunDirectory(earlier)
        resume = earlier if earlier is not None and (earlier / "state.json").is_file() else None
        if self.isolate:
            return self._run_process(folder, values, resume)
        verbose = self.console.verbose
        try:
            if resume is not None:
                # The search checked the recipe's space when it resumed.
                return runner.run(self.recipe, resume=resume, force=True,
                                  verbose=verbose).run_dir
            return runner.run(self.recipe, overrides={**self.fixed, **values}, output=folder,
                              verbose=verbose).run_dir
        except TrainingDiverged as error:
            return _diverged_run(folder, error)

    def _run_process(self, folder, values, resume):
        """Runs the trial as `kft run RECIPE_FILE` in a new Python process."""
        if resume is not None:
            args = ["--resume", str(resume), "--force"]
        else:
            params_file = folder / "params.json"
            self.tune_dir.write_json(params_file, {**self.fixed, **values})
            args = ["--params", str(params_file), "--output", str(folder)]
        # The trial's output follows what this process printed before it.
        sys.stdout.flush()
        process = subprocess.run(
            [sys.executable, "-m", "kft", "run", self.recipe.source, *args],
            stderr=subprocess.PIPE, text=True,
        )
        sys.stderr.write(process.stderr)
        latest = _latest_run(folder)
        if process.returncode != 0 and latest is not None and \
                RunDirectory(latest).read_json("state.json").get("error_type") == "TrainingDiverged":
            return _diverged_run(folder, process.stderr.strip())
        if process.returncode != 0:
            lines = [line for line in process.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"kft run exited with status {process.returncode}: "
                               f"{lines[-1] if lines else 'no message'}")
        return RunDirectory(_latest_run(folder))

    def on_trial_end(self, trial):
        try:
            super().on_trial_end(trial)
        finally:
            row = next((row for row in self.rows() if row.trial == trial.trial_id), None)
            if row is not None:
                self.console.trial_ended(row, self.objective)
            self.write_results()

    def rows(self):
        """One `TrialRow` per trial, in the order the trials started."""
        rows = []
        for trial_id in self.oracle.start_order:
            trial = self.oracle.trials[trial_id]
            record_path = self.tune_dir.trial_folder(trial_id) / "record.json"
            record = json.loads(record_path.read_text()) if record_path.is_file() else {}
            status = results.status_name(trial.status)
            message = record.get("message") or _last_line(trial.message)
            rows.append(results.TrialRow(
                trial=trial_id, status=status,
                score=float(trial.score) if status == "completed" else None,
                seconds=record.get("seconds"),
                values=record.get("values") or self.trial_values(trial),
                run_dir=record.get("run_dir"),
                message=None if status == "completed" else message,
            ))
        return rows

    def best_params(self, best):
        """The params that repeat trial `best` (Hyperband's budget left at full)."""
        values = {name: value for name, value in best.values.items() if name != self.budget}
        return {**self.fixed, **values}

    def write_results(self):
        """Writes trials.csv, trials.png and best_params.json from the trials so far."""
        rows = self.rows()
        results.write_csv(rows, self.names, self.objective, self.tune_dir.trials_csv,
                          RunDirectory.publish)
        results.plot(rows, self.objective, self.direction, self.tune_dir.trials_png)
        best = results.best_row(rows, self.direction)
        if best is not None:
            self.tune_dir.write_json(self.tune_dir.best_params, self.best_params(best))
        return rows, best

    # keras-tuner's model hooks: a trial's model lives in its run directory.
    def save_model(self, trial_id, model, step=0):
        pass

    def load_model(self, trial):
        row = next(row for row in self.rows() if row.trial == trial.trial_id)
        return keras.saving.load_model(self.tune_dir.path / row.run_dir / "model.keras")


def tune(recipe, trials=10, tuner=None, objective=None, direction=None, overrides=None,
         data=None, output=None, resume=None, retrain_best=False, seed=None, max_failures=3,
         factor=3, isolate=False, verbose=True):
    """Searches `recipe.search` with keras-tuner; each trial runs the whole recipe.

    Args:
        recipe: a `kft.Recipe` with a `search` space.
        trials: how many trials the search holds in all; a resumed search
            counts the trials it already ran. Caps Hyperband too.
        tuner: `"random"` (default), `"bayesian"` or `"hyperband"`.
            Hyperband needs a `kft.tuning.Budget()` param in the search.
        objective: the metric to optimise, at each trial's best epoch
            (default: the recipe's `monitor`).
        direction: `"min"` or `"max"`; by default Keras' rule on the
            recipe's metrics (`kft.runs.monitor.monitor_mode`): the loss
            falls, `val_auc` rises, `val_mae` falls.
        overrides: `--set` strings or a dict, applied to every trial; a
            searched param cannot be set.
        data: the `--data` value for every trial.
        output: parent folder of the tune directory (default `runs/`), and of
            the retrained run.
        resume: a tune directory to continue; its tuner, objective and fixed
            params are used, and an interrupted trial resumes from its last
            completed epoch.
        retrain_best: after the search, train the best configuration as a
            normal run into `output`.
        seed: the oracle's random seed (a positive integer; `None` for a
            random one).
        max_failures: stop after this many failed trials in a row.
        factor: Hyperband's reduction factor.
        isolate: run each trial as `kft run RECIPE_FILE` in a process of its
            own (the recipe must come from a file): TensorFlow keeps part of
            each in-process trial's memory, a process returns all of it, for
            a few seconds of start-up per trial.
        verbose: print each trial and the summary (`kft.console`).

    Returns:
        A `TuneResult`.

    Example:
    ```python
    result = kft.tuning.tune(kft.runs.recipe.load("flowers.py"), trials=20, tuner="bayesian")
    print(result.best_params)
    ```
    """
    _check_search(recipe, trials, isolate)
    out = Console(verbose)
    if resume is not None:
        if overrides or data:
            raise KftError("--resume continues with the search's saved params; drop --set/--data.")
        tune_dir = TuneDirectory.existing(resume)
        config = json.loads(tune_dir.config.read_text())
        _check_same(config, recipe, tuner, objective, direction, seed)
    else:
        config = _new_config(recipe, tuner, objective, direction, seed, factor, overrides, data)
        tune_dir = TuneDirectory.create(recipe.name, output)
        tune_dir.write_json(tune_dir.config, config)
    out.tune_directory(tune_dir, resumed=resume is not None)

    oracle = _oracle(recipe, config, trials, max_failures)
    recipe_tuner = RecipeTuner(oracle, recipe, tune_dir, config["fixed"], config["objective"],
                               config["direction"], isolate=isolate, verbose=verbose)
    out.search_started(config, recipe.search, len(oracle.trials), trials)
    try:
        recipe_tuner.search(verbose=0)
    except _StopSearch as stop:
        raise stop.error from None
    except RuntimeError as error:
        if "consecutive failures" not in str(error):
            raise
        raise KftError(
            f"{max_failures} trials failed in a row, so the search stopped: "
            f"{recipe_tuner.rows()[-1].message}. See {tune_dir.trials_csv}; fix the recipe "
            f"or its search space and resume with --resume {tune_dir.path}."
        ) from None
    finally:
        rows, best = recipe_tuner.write_results()

    best_params = recipe_tuner.best_params(best) if best is not None else None
    outcome = TuneResult(tune_dir=tune_dir, trials=rows, best=best, best_params=best_params)
    out.search_summary(outcome, recipe_tuner.names, config["objective"])
    if retrain_best:
        if best_params is None:
            raise KftError("--retrain-best: no trial completed, so there is nothing to retrain.")
        out.retraining(best.trial)
        outcome.retrained = runner.run(recipe, overrides=best_params, output=output,
                                       verbose=verbose)
        out.retrained(outcome.retrained)
    return outcome


def _check_search(recipe, trials, isolate):
    if not recipe.search:
        raise KftError(
            f"Recipe {recipe.name!r} declares no search space: add search={{...}}, e.g. "
            "search={'lr': kft.tuning.LogUniform(1e-5, 1e-2)}."
        )
    space.check(recipe.search, recipe.defaults(), recipe.name)
    if trials < 1:
        raise KftError(f"--trials must be at least 1, got {trials}.")
    if isolate and not recipe.source:
        raise KftError("--isolate runs each trial as `kft run RECIPE_FILE`: load the recipe "
                       "from its file with kft.runs.recipe.load.")


def _new_config(recipe, tuner, objective, direction, seed, factor, overrides, data):
    """How a new search runs: what `tune.json` records for `--resume`."""
    tuner = tuner or "random"
    if tuner not in TUNERS:
        raise KftError(f"--tuner must be one of {', '.join(TUNERS)}, got {tuner!r}.")
    objective = objective or recipe.monitor
    if direction is None:
        mode = recipe.monitor_mode if objective == recipe.monitor else "auto"
        direction = monitor_mode(objective, recipe.metrics, mode)
    results.check_objective_direction(direction)
    config = {
        "recipe": recipe.name, "tuner": tuner, "objective": objective,
        "direction": direction, "seed": seed, "factor": factor,
        "fixed": _fixed_params(recipe, overrides, data, tuner),
        "search": {name: repr(value) for name, value in recipe.search.items()},
    }
    _max_epochs(recipe, config)  # Rejects a Hyperband search without a budget now.
    return config


def _fixed_params(recipe, overrides, data, tuner):
    """The params `--set`/`--data` fix for every trial, typed; none may be searched."""
    resolved = vars(recipe.resolve(overrides, data=data))
    fixed = {key: value for key, value in resolved.items() if value != recipe.defaults()[key]}
    budget = space.budget_param(recipe.search)
    # Only Hyperband sets the budget; the other tuners leave it to --set.
    varied = {name for name in recipe.search if name != budget or tuner == "hyperband"}
    searched = sorted(set(fixed) & varied)
    if searched:
        raise KftError(
            f"{', '.join(searched)} is searched, so --set cannot fix it; remove it from the "
            "recipe's search to fix it."
        )
    return fixed


def _max_epochs(recipe, config):
    """Hyperband's most epochs per trial: the Budget's max or the param's value."""
    if config["tuner"] != "hyperband":
        return None
    budget = space.budget_param(recipe.search)
    if budget is None:
        raise KftError(
            "Hyperband gives each trial an epoch budget, and the recipe marks no param as it: "
            "add e.g. search={..., 'finetune_epochs': kft.tuning.Budget()} (the param that "
            "counts the epochs of the stage to tune), or use --tuner random or bayesian."
        )
    declared = recipe.search[budget].max
    value = declared if declared is not None else config["fixed"].get(budget, recipe.defaults()[budget])
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KftError(f"The Budget param {budget!r} must be a positive integer, got {value!r}.")
    return value


def _oracle(recipe, config, trials, max_failures):
    objective = keras_tuner.Objective(config["objective"], config["direction"])
    common = dict(
        objective=objective, hyperparameters=space.hyperparameters(recipe.search),
        seed=config["seed"], tune_new_entries=False, allow_new_entries=False,
        max_consecutive_failed_trials=max_failures,
    )
    if config["tuner"] == "random":
        return keras_tuner.oracles.RandomSearchOracle(max_trials=trials, **common)
    if config["tuner"] == "bayesian":
        return keras_tuner.oracles.BayesianOptimizationOracle(max_trials=trials, **common)
    oracle = keras_tuner.oracles.HyperbandOracle(
        max_epochs=_max_epochs(recipe, config), factor=config["factor"], **common)
    # Hyperband runs whole brackets; `trials` caps the search all the same.
    oracle.max_trials = trials
    return oracle


def _check_same(config, recipe, tuner, objective, direction, seed):
    asked = {"tuner": tuner, "objective": objective, "direction": direction, "seed": seed}
    for key, value in asked.items():
        if value is not None and value != config[key]:
            raise KftError(
                f"--resume continues a search with {key} {config[key]!r}; drop the "
                f"--{key} {value!r} option or start a new search."
            )
    now = {name: repr(value) for name, value in recipe.search.items()}
    if now != config["search"]:
        raise KftError(
            "The recipe's search space changed since the search started "
            f"({config['search']} then, {now} now): start a new search."
        )


def _diverged_run(folder, error):
    """A trial whose loss became NaN is scored on its finite epochs, if it has any."""
    latest = _latest_run(folder)
    if latest is None or not RunDirectory(latest).history.is_file():
        raise keras_tuner.errors.FailedTrialError(f"{error}") from None
    return RunDirectory(latest)


def _latest_run(folder):
    runs = sorted(path for path in folder.iterdir() if path.is_dir()) if folder.is_dir() else []
    return runs[-1] if runs else None


def _last_line(message):
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _typed(value, default):
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
