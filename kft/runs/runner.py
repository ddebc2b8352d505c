"""Runs a recipe stage by stage into a run directory, and resumes it.

The orchestration only: what each stage trains is `kft.runs.stages`, how it
compiles `kft.runs.compiling`, what the run reports `kft.runs.results`, what
it prints `kft.console`.
"""

import dataclasses
import pathlib
import shutil
import sys
import tempfile
import time

import keras

from kft import console
from kft import freezing
from kft import saving
from kft.data import as_data
from kft.errors import KftError
from kft.runs import callbacks as run_callbacks
from kft.runs import history
from kft.runs import results
from kft.runs import stages as stage_plan
from kft.runs.compiling import compile_stage
from kft.runs.monitor import monitor_mode
from kft.runs.run_directory import RunDirectory
from kft.training import accumulation
from kft.training import distribute
from kft.training import feature_cache
from kft.training import precision


@dataclasses.dataclass
class RunResult:
    """What `run` returns.

    Attributes:
        run_dir: the `RunDirectory`.
        model: the trained model.
        metrics: what `metrics.json` holds.
        reports: the per-class `ClassificationReport` of each held-out set
            (none for taggers).
    """

    run_dir: RunDirectory
    model: keras.Model
    metrics: dict
    reports: dict = dataclasses.field(default_factory=dict)


def run(recipe, overrides=None, data=None, output=None, resume=None, verbose=True):
    """Runs every stage of `recipe` and writes the results to a run directory.

    The run params (`kft.runs.recipe.RUN_PARAMS`) pick the `tf.distribute`
    strategy (the model, optimizer and metrics are created in its scope),
    the precision policy and gradient accumulation. In a multi-worker
    cluster only the chief writes the run directory; the other workers
    write theirs to a temporary folder that is removed at the end.

    Args:
        recipe: a `kft.Recipe`.
        overrides: `--set` style `key=value` strings or a dict.
        data: the `--data` value.
        output: parent folder for the run directory (default `runs/`).
        resume: an earlier run directory to continue from its last completed
            epoch; its saved hyperparameters are used.
        verbose: print progress and the summary (`kft.console`); Keras'
            progress bars follow it too.

    Returns:
        A `RunResult`.
    """
    params = recipe.resolve(_saved_params(resume) if resume is not None else overrides,
                            data=None if resume is not None else data)
    # First TensorFlow work of the run: multi-worker collectives must be
    # configured before anything runs.
    strategy = distribute.strategy_from_name(params.strategy)
    precision.check_precision(params.precision)
    accumulation.check_accumulate(params.accumulate)
    chief = distribute.is_chief(strategy)
    worker_dir = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="kft-worker-"))
    out = console.Console(verbose)
    try:
        with strategy.scope(), precision.precision_policy(params.precision):
            result = _run(recipe, params, strategy, output if chief else worker_dir,
                          _worker_copy(resume, worker_dir), out)
    finally:
        if worker_dir is not None:
            shutil.rmtree(worker_dir, ignore_errors=True)
    out.run_summary(result)
    return result


def _saved_params(path):
    """The hyperparameters saved in run directory `path`."""
    return RunDirectory.existing(path).read_json("params.json")


def _worker_copy(resume, worker_dir):
    """Where a worker resumes from: a private copy of the chief's run directory."""
    if resume is None or worker_dir is None:
        return resume
    return shutil.copytree(resume, worker_dir / pathlib.Path(resume).name)


def _run(recipe, params, strategy, output, resume, out):
    out.strategy(strategy)
    if resume is not None:
        run_dir = RunDirectory.existing(resume)
        state = run_dir.read_json("state.json")
        out.run_directory(run_dir, resumed_after=state["epoch"])
        history.drop_unfinished(run_dir, state["epoch"])
    else:
        run_dir = RunDirectory.create(recipe.name, output)
        state = {"epoch": 0, "best": None, "stages": []}
        run_dir.write_json("params.json", vars(params))
        if recipe.source:
            # `kft export` rebuilds the run's data from it (int8 calibration).
            shutil.copyfile(recipe.source, run_dir.path / "recipe.py")
        out.run_directory(run_dir)

    keras.utils.set_random_seed(int(getattr(params, "seed", 0)))
    data = as_data(recipe.data(params))
    out.data(data)
    stages = recipe.build_stages(params)
    resumed = state["epoch"] > 0 and run_dir.last_checkpoint.is_file()
    if resumed:
        # Compiled, so the optimizer's moments and step count carry on.
        # kft.saving.load_model also restores PEFT layers inside keras-hub blocks.
        model = saving.load_model(run_dir.last_checkpoint)
    else:
        model = recipe.model(params, data)
    if params.precision != "float32":
        out.float32_outputs(precision.float32_outputs(model))
    run_dir.write_json("labels.json", list(data.class_names))
    probe_done = (run_dir.path / results.BASELINE_FILE).is_file()
    if recipe.baseline_for(params) and not resumed and not probe_done:
        out.baseline(*results.linear_probe_baseline(recipe, model, data, params, run_dir))

    starts = stage_plan.stage_starts(stages)
    stage_rows = list(state["stages"])
    for index, stage in enumerate(stages):
        if state["epoch"] >= starts[index] + stage.epochs:
            continue
        began = time.time()
        trainable = stage_plan.apply_stage_trainable(model, stage)
        out.stage_header(index, len(stages), stage, trainable, model.count_params())
        # A checkpoint from the end of the previous stage holds that stage's
        # optimizer; only one from within this stage carries on.
        if not (resumed and model.compiled and state["epoch"] > starts[index]):
            compile_stage(model, recipe, stage,
                          steps_per_epoch=stage_plan.steps_per_epoch(data),
                          accumulate=params.accumulate)
            if stage_plan.unfreezes_gradually(stage):
                # Slots for every variable that may start training mid-fit.
                freezing.prepare_optimizer(model)
        resumed = False
        fitted = _fit_stage(recipe, model, data, stage, starts[index], state, run_dir, params,
                            out)
        stage_rows.append({
            "name": stage.name, "epochs": stage.epochs, "seconds": time.time() - began,
            "trainable": trainable,
            "metrics": {key: values[-1] for key, values in fitted.history.items()},
        })
        state["stages"] = stage_rows
        run_dir.write_json("state.json", state)

    run_dir.save_model(model, run_dir.final_model)
    metrics, reports = results.final_results(recipe, model, data, stages, stage_rows, state,
                                             run_dir)
    return RunResult(run_dir=run_dir, model=model, metrics=metrics, reports=reports)


def _fit_stage(recipe, model, data, stage, start, state, run_dir, params, out):
    checkpoint = run_callbacks.RunCheckpoint(
        run_dir, state, stage.name, monitor=recipe.monitor,
        mode=monitor_mode(recipe.monitor, recipe.metrics, recipe.monitor_mode))
    # History first: an epoch is only done once the checkpoint and state say so.
    callbacks = [
        run_callbacks.StageCSVLogger(run_dir.history, stage.name),
        checkpoint,
        keras.callbacks.TensorBoard(log_dir=str(run_dir.path / "tensorboard")),
    ]
    callbacks += list(recipe.callbacks(params)) if recipe.callbacks else []
    callbacks += list(stage.callbacks)
    fit_model, train, validation = _cached_head(model, data, stage, params, out)
    if fit_model is not model:
        # The head model shares its layers; checkpoints hold the whole model.
        checkpoint.model_to_save = model
    strategy = fit_model.distribute_strategy
    return fit_model.fit(
        distribute.distribute_dataset(train, strategy),
        validation_data=distribute.distribute_dataset(validation, strategy),
        initial_epoch=state["epoch"],
        epochs=start + stage.epochs,
        callbacks=callbacks,
        class_weight=data.class_weight,
        # The pipeline reshuffles itself each epoch.
        shuffle=False,
        verbose=_keras_verbosity(out),
    )


def _cached_head(model, data, stage, params, out):
    """The model and data to fit: the head on cached features where safe."""
    if stage.cache_features is False or stage_plan.unfreezes_gradually(stage):
        return model, data.train, data.validation
    safe, reason = feature_cache.can_cache(model)
    if not safe:
        if stage.cache_features:
            raise KftError(f"Stage {stage.name!r} sets cache_features=True, but {reason}")
        return model, data.train, data.validation
    began = time.time()
    features, head = feature_cache.split_at_head(model)
    feature_cache.compile_head(head, model)
    seed = int(getattr(params, "seed", 0))
    train = feature_cache.cache_features(
        features, feature_cache.preprocessed(model, data.train), shuffle=True, seed=seed)
    validation = None
    if data.validation is not None:
        validation = feature_cache.cache_features(
            features, feature_cache.preprocessed(model, data.validation))
    out.cached_features(time.time() - began)
    return head, train, validation


def _keras_verbosity(out):
    # A progress bar for people, a line per epoch for logs and CI.
    if not out.verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2
