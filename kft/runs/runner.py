"""Runs a recipe stage by stage into a run directory, and resumes it.

The orchestration only: what each stage trains is `kft.runs.stages`, how it
compiles `kft.runs.compiling`, how it regularises `kft.runs.regularizing`,
what the run reports `kft.runs.results`, what it prints `kft.console`.
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
from kft import tracking
from kft.errors import KftError
from kft.errors import TrainingDiverged
from kft.inference.drift import store_reference
from kft.runs import callbacks as run_callbacks
from kft.runs import history
from kft.runs import regularizing
from kft.runs import results
from kft.runs import stages as stage_plan
from kft.runs.compiling import compile_stage
from kft.runs.compiling import stage_learning_rate
from kft.runs.monitor import monitor_mode
from kft.runs.recipe import recipe_digest
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


def run(recipe, overrides=None, data=None, output=None, resume=None, force=False,
        verbose=True, tracking_uri=None, experiment=None):
    """Runs every stage of `recipe` and writes the results to a run directory.

    The run params (`kft.runs.recipe.RUN_PARAMS`) pick the `tf.distribute`
    strategy (the model, optimizer and metrics are created in its scope),
    the precision policy and gradient accumulation. In a multi-worker
    cluster only the chief writes the run directory; the other workers
    write theirs to a temporary folder that is removed at the end.

    The run directory is made once the stages, data and model are built, so
    a bad param or bad data leaves none behind; a run that fails before its
    first epoch ends removes it, one with a checkpoint keeps it and records
    the failure in `state.json` (`"status": "failed"`). Training stops at
    the first NaN or infinite loss (`kft.errors.TrainingDiverged`).

    Args:
        recipe: a `kft.Recipe`.
        overrides: `--set` style `key=value` strings or a dict.
        data: the `--data` value.
        output: parent folder for the run directory (default `runs/`).
        resume: an earlier run directory to continue from its last completed
            epoch; its saved hyperparameters are used. A finished run is
            returned as it is, without training.
        force: resume even though the recipe file changed since the run
            started (its SHA-256 is in `state.json`).
        verbose: print progress and the summary (`kft.console`); Keras'
            progress bars follow it too.
        tracking_uri: where the `tracking` param logs the run (`kft.tracking`):
            an MLflow server or store; default `MLFLOW_TRACKING_URI`, else
            `./mlruns/mlflow.db`. A resumed run keeps its own (`tracking.json`).
        experiment: the tracking experiment (default: the recipe's name).

    Returns:
        A `RunResult`.
    """
    out = console.Console(verbose)
    if resume is not None:
        previous = RunDirectory.existing(resume)
        if previous.finished:
            out.already_finished(previous)
            return RunResult(run_dir=previous, model=saving.load_model(previous.final_model),
                             metrics=previous.read_json("metrics.json"))
        _check_recipe_unchanged(previous, recipe, force)
    params = recipe.resolve(_saved_params(resume) if resume is not None else overrides,
                            data=None if resume is not None else data)
    # First TensorFlow work of the run: multi-worker collectives must be
    # configured before anything runs.
    strategy = distribute.strategy_from_name(params.strategy)
    precision.check_precision(params.precision)
    accumulation.check_accumulate(params.accumulate)
    chief = distribute.is_chief(strategy)
    # Only the chief's run is tracked, as only it writes the run directory.
    tracker = tracking.create(getattr(params, "tracking", "") if chief else "",
                              uri=tracking_uri if chief else None, experiment=experiment,
                              out=out)
    worker_dir = None if chief else pathlib.Path(tempfile.mkdtemp(prefix="kft-worker-"))
    try:
        with strategy.scope(), precision.precision_policy(params.precision):
            result = _run(recipe, params, strategy, output if chief else worker_dir,
                          _worker_copy(resume, worker_dir), out, tracker)
    finally:
        if worker_dir is not None:
            shutil.rmtree(worker_dir, ignore_errors=True)
    out.run_summary(result)
    return result


def _saved_params(path):
    """The hyperparameters saved in run directory `path`."""
    return RunDirectory.existing(path).read_json("params.json")


def _check_recipe_unchanged(run_dir, recipe, force):
    saved = run_dir.read_json("state.json").get("recipe_sha256")
    current = recipe_digest(recipe)
    if force or saved is None or current is None or saved == current:
        return
    raise KftError(
        f"{recipe.source} changed since {run_dir.path} started (its SHA-256 differs from "
        "the one in state.json), so resuming would continue with another recipe: start a "
        "new run, or pass --force to resume anyway."
    )


def _worker_copy(resume, worker_dir):
    """Where a worker resumes from: a private copy of the chief's run directory."""
    if resume is None or worker_dir is None:
        return resume
    return shutil.copytree(resume, worker_dir / pathlib.Path(resume).name)


def _run(recipe, params, strategy, output, resume, out, tracker):
    out.strategy(strategy)
    # Everything a bad param or bad data can break comes before the run directory.
    stages = recipe.build_stages(params)
    if not any(stage.epochs for stage in stages):
        raise KftError(f"Recipe {recipe.name!r}: every stage has 0 epochs; nothing would train.")
    keras.utils.set_random_seed(int(getattr(params, "seed", 0)))
    data = recipe.build_data(params)
    forgetting = recipe.build_forgetting(params)
    if resume is not None:
        run_dir = RunDirectory.existing(resume)
        state = run_dir.read_json("state.json")
        resumed = state["epoch"] > 0 and run_dir.last_checkpoint.is_file()
        # Compiled, so the optimizer's moments and step count carry on.
        # kft.saving.load_model also restores PEFT layers inside keras-hub blocks.
        model = (saving.load_model(run_dir.last_checkpoint) if resumed
                 else recipe.build_model(params, data))
    else:
        resumed = False
        model = recipe.build_model(params, data)
    # A causal LM's batches come from its own tokenizer and chat template.
    data = recipe.fit_data(data, model, params)
    out.data(data)
    _check_schedules(stages, data, params)
    if resume is not None:
        out.run_directory(run_dir, resumed_after=state["epoch"])
        history.drop_unfinished(run_dir, state["epoch"])
    else:
        run_dir, state = _new_run_directory(recipe, params, output)
        out.run_directory(run_dir)
    try:
        tracker.start(run_dir, recipe, params, stages)
        return _train(recipe, params, data, stages, model, run_dir, state, resumed, out,
                      tracker, forgetting)
    except BaseException as error:
        _record_failure(run_dir, state, error, discard=resume is None, out=out,
                        tracker=tracker)
        raise


def _new_run_directory(recipe, params, output):
    run_dir = RunDirectory.create(recipe.name, output)
    state = {"epoch": 0, "best": None, "stages": [], "status": "running",
             "recipe_sha256": recipe_digest(recipe)}
    run_dir.write_json("params.json", vars(params))
    if recipe.source:
        # `kft export` rebuilds the run's data from it (int8 calibration).
        shutil.copyfile(recipe.source, run_dir.path / "recipe.py")
    run_dir.write_json("state.json", state)
    return run_dir, state


def _check_schedules(stages, data, params):
    """Builds each stage's learning-rate schedule once: a warmup longer than its
    stage fails now, not after the stages before it have trained."""
    steps = stage_plan.steps_per_epoch(data)
    for stage in stages:
        try:
            stage_learning_rate(stage, steps, params.accumulate)
        except KftError as error:
            raise KftError(f"Stage {stage.name!r}: {error}") from None


def _train(recipe, params, data, stages, model, run_dir, state, resumed, out, tracker,
           forgetting=None):
    if params.precision != "float32":
        out.float32_outputs(precision.float32_outputs(model))
    baseline_done = (run_dir.path / results.BASELINE_FILE).is_file()
    if data.task == "causal_lm":
        results.write_generation_settings(data, run_dir)
        if not resumed and not baseline_done:
            # Before any stage trains: the un-fine-tuned model's scores.
            out.base_model(*results.base_model_baseline(recipe, model, data, params, run_dir))
    else:
        run_dir.write_json("labels.json", list(data.class_names))
        if recipe.baseline_for(params) and not resumed and not baseline_done:
            out.baseline(*results.linear_probe_baseline(recipe, model, data, params, run_dir))
    if forgetting is not None and not (resumed or
                                       (run_dir.path / results.FORGETTING_FILE).is_file()):
        # The pretrained model's score on what the run must not forget.
        out.forgetting_before(*results.forgetting_before(recipe, model, forgetting, params,
                                                          run_dir))

    starts = stage_plan.stage_starts(stages)
    stage_rows = list(state["stages"])
    state["status"] = "running"
    for index, stage in enumerate(stages):
        if stage.epochs == 0 or state["epoch"] >= starts[index] + stage.epochs:
            continue
        began = time.time()
        trainable = stage_plan.apply_stage_trainable(model, stage)
        out.stage_header(index, len(stages), stage, trainable, model.count_params())
        # A checkpoint from the end of the previous stage holds that stage's
        # optimizer; only one from within this stage carries on.
        mid_stage = resumed and state["epoch"] > starts[index]
        if not (mid_stage and model.compiled):
            compile_stage(model, recipe, stage,
                          steps_per_epoch=stage_plan.steps_per_epoch(data),
                          accumulate=params.accumulate)
            if stage_plan.unfreezes_gradually(stage):
                # Slots for every variable that may start training mid-fit.
                freezing.prepare_optimizer(model)
        resumed = False
        fitted, stopper = _fit_stage(recipe, model, data, stage, starts[index], state, run_dir,
                                     params, out, tracker, index=index, mid_stage=mid_stage)
        last = -1
        if stopper is not None and stopper.best_weights is not None:
            # Early stopping put back the best epoch's weights: report that
            # epoch, checkpoint those weights and mark the stage done, so the
            # next stage (and a resume) starts where the plan says.
            final_epoch = fitted.epoch[-1]
            last = stopper.best_epoch - final_epoch - 1
            if stopper.stopped_epoch:
                out.stopped_early(stage, final_epoch - starts[index] + 1,
                                  stopper.best_epoch - starts[index] + 1)
            if stopper.best_epoch != final_epoch:
                run_dir.save_model(model, run_dir.last_checkpoint)
            state["epoch"] = starts[index] + stage.epochs  # written with the stage row below
        stage_rows.append({
            "name": stage.name, "epochs": len(fitted.epoch), "seconds": time.time() - began,
            "trainable": trainable,
            "metrics": {key: values[last] for key, values in fitted.history.items()},
        })
        state["stages"] = stage_rows
        run_dir.write_json("state.json", state)

    run_dir.save_model(model, run_dir.final_model)
    metrics, reports = results.final_results(recipe, model, data, stages, stage_rows, state,
                                             run_dir, params, forgetting)
    # What `kft drift` compares production inputs with (classifiers only).
    store_reference(model, data, run_dir.path, seed=int(getattr(params, "seed", 0)))
    # Before the state says finished: an interrupt while uploading leaves both
    # saying interrupted (the results are all written).
    tracker.finish(run_dir, metrics)
    state["status"] = "finished"
    state.pop("error", None)
    state.pop("error_type", None)
    run_dir.write_json("state.json", state)
    return RunResult(run_dir=run_dir, model=model, metrics=metrics, reports=reports)


def _record_failure(run_dir, state, error, discard, out, tracker):
    """Marks the run failed or interrupted; removes a new one with no checkpoint.

    A `KftError`'s message gains what became of the run directory. The
    tracker's run ends FAILED or KILLED.
    """
    interrupted = isinstance(error, KeyboardInterrupt)
    if discard and run_dir.discard():
        note = f"No epoch finished, so {run_dir.path} was removed."
    else:
        state["status"] = "interrupted" if interrupted else "failed"
        if not interrupted:
            state["error"] = str(error)
            state["error_type"] = type(error).__name__
        try:
            run_dir.write_json("state.json", state)
        except KftError:
            pass  # The disk that failed the checkpoint may fail this too.
        epoch = state["epoch"]
        note = (f"{run_dir.path} keeps epoch {epoch}; continue with "
                f"`kft run RECIPE --resume {run_dir.path}`." if epoch else
                f"{run_dir.path} holds no finished epoch.")
        if isinstance(error, TrainingDiverged):
            note = (f"The checkpoints in {run_dir.path} keep epoch {epoch}, "
                    "the last finite weights.")
    tracker.end("interrupted" if interrupted else "failed", error)
    if interrupted:
        out.interrupted(note)
    elif isinstance(error, KftError):
        error.args = (f"{error} {note}",)


def _fit_stage(recipe, model, data, stage, start, state, run_dir, params, out, tracker,
               index=0, mid_stage=False):
    checkpoint = run_callbacks.RunCheckpoint(
        run_dir, state, stage.name, monitor=recipe.monitor,
        mode=monitor_mode(recipe.monitor, recipe.metrics, recipe.monitor_mode))
    # History first: an epoch is only done once the checkpoint and state say so.
    callbacks = [
        run_callbacks.StopOnNonFiniteLoss(stage.name),
        run_callbacks.StageCSVLogger(run_dir.history, stage.name),
        checkpoint,
        # After the checkpoint: the tracker only logs epochs a resume keeps.
        *tracker.callbacks(),
        keras.callbacks.TensorBoard(log_dir=str(run_dir.path / "tensorboard")),
    ]
    callbacks += recipe.build_callbacks(params)
    callbacks += list(stage.callbacks)
    stopper = None
    if stage.early_stopping:
        if data.validation is None:
            raise KftError(f"Stage {stage.name!r} sets early_stopping={stage.early_stopping}, "
                           "which watches val_loss, but the data has no validation split.")
        stopper = keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=stage.early_stopping, restore_best_weights=True)
        callbacks.append(stopper)
    regularizer = regularizing.stage_regularizer(stage)
    needs_backbone = regularizer is not None and regularizer.needs_inputs
    fit_model, train, validation = _cached_head(model, data, stage, params, out, needs_backbone)
    if regularizer is not None:
        regularizing.bind(regularizer, model, run_dir, index, mid_stage)
        fit_model, train, validation = regularizing.wrap(regularizer, fit_model, model,
                                                         train, validation)
    if fit_model is not model:
        # The head model and the regularised one share its layers; checkpoints
        # hold the whole model.
        checkpoint.model_to_save = model
    strategy = fit_model.distribute_strategy
    train, steps_per_epoch = distribute.repeat_for_epochs(train, strategy)
    fitted = fit_model.fit(
        distribute.distribute_dataset(train, strategy),
        validation_data=distribute.distribute_dataset(validation, strategy),
        steps_per_epoch=steps_per_epoch,
        initial_epoch=state["epoch"],
        epochs=start + stage.epochs,
        callbacks=callbacks,
        class_weight=data.class_weight,
        # The pipeline reshuffles itself each epoch.
        shuffle=False,
        verbose=_keras_verbosity(out),
    )
    return fitted, stopper


def _cached_head(model, data, stage, params, out, needs_backbone=False):
    """The model and data to fit: the head on cached features where safe
    (never when the stage's regulariser runs the backbone on each batch)."""
    if stage.cache_features is False or stage_plan.unfreezes_gradually(stage) or needs_backbone:
        return model, data.train, data.validation
    # cache_features=True: the head trains on un-augmented features even
    # when augmentation below it would make caching inexact.
    safe, reason = feature_cache.can_cache(model, allow_random=stage.cache_features is True)
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
