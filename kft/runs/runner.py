"""Runs a recipe stage by stage into a run directory, and resumes it."""

import dataclasses
import pathlib
import shutil
import sys
import tempfile
import time
import warnings

import click
import keras

from kft import evaluation, freezing, saving
from kft.training import accumulation
from kft.training import distribute
from kft.training import feature_cache
from kft.runs import callbacks as kft_callbacks
from kft.training import precision
from kft.runs import report
from kft.runs.compiling import compile_for_evaluation, compile_stage
from kft.errors import KftError
from kft.model_tree import count_params
from kft.runs.run_directory import RunDirectory


@dataclasses.dataclass
class RunResult:
    """What `run` returns: the run directory, the trained model, its metrics."""

    run_dir: RunDirectory
    model: keras.Model
    metrics: dict


def run(recipe, overrides=None, data=None, output=None, resume=None):
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
    try:
        with strategy.scope(), precision.precision_policy(params.precision):
            return _run(recipe, params, strategy, output if chief else worker_dir,
                        _worker_copy(resume, worker_dir))
    finally:
        if worker_dir is not None:
            shutil.rmtree(worker_dir, ignore_errors=True)


def _saved_params(path):
    """The hyperparameters saved in run directory `path`."""
    return RunDirectory.existing(path).read_json("params.json")


def _worker_copy(resume, worker_dir):
    """Where a worker resumes from: a private copy of the chief's run directory."""
    if resume is None or worker_dir is None:
        return resume
    return shutil.copytree(resume, worker_dir / pathlib.Path(resume).name)


def _run(recipe, params, strategy, output, resume):
    if strategy.num_replicas_in_sync > 1:
        click.echo(f"Strategy: {type(strategy).__name__}, {strategy.num_replicas_in_sync} "
                   "replicas (each batch is split between them)")
    if resume is not None:
        run_dir = RunDirectory.existing(resume)
        state = run_dir.read_json("state.json")
        click.echo(f"Resuming {run_dir.path} after epoch {state['epoch']}")
        _drop_unfinished_history(run_dir, state["epoch"])
    else:
        run_dir = RunDirectory.create(recipe.name, output)
        state = {"epoch": 0, "best": None, "stages": []}
        run_dir.write_json("params.json", vars(params))
        if recipe.source:
            # `kft export` rebuilds the run's data from it (int8 calibration).
            shutil.copyfile(recipe.source, run_dir.path / "recipe.py")
        click.echo(f"Run directory: {run_dir.path}")

    keras.utils.set_random_seed(int(getattr(params, "seed", 0)))
    dataset = recipe.data(params)
    _report_data(dataset)
    stages = recipe.build_stages(params)
    resumed = state["epoch"] > 0 and run_dir.last_checkpoint.is_file()
    if resumed:
        # Compiled, so the optimizer's moments and step count carry on.
        # kft.saving.load_model also restores PEFT layers inside keras-hub blocks.
        model = saving.load_model(run_dir.last_checkpoint)
    else:
        model = recipe.model(params, dataset)
    if params.precision != "float32":
        kept = precision.float32_outputs(model)
        if kept:
            click.echo(f"Mixed precision: output layer(s) {', '.join(kept)} compute in float32")
    run_dir.write_json("labels.json", list(dataset.class_names))
    probe_done = (run_dir.path / "baseline.json").is_file()
    if recipe.baseline_for(params) and not resumed and not probe_done:
        _linear_probe(recipe, model, dataset, params, run_dir)

    starts = _stage_starts(stages)
    stage_rows = list(state["stages"])
    for index, stage in enumerate(stages):
        end = starts[index] + stage.epochs
        if state["epoch"] >= end:
            continue
        began = time.time()
        trainable = apply_stage_trainable(model, stage)
        report.stage_header(index, len(stages), stage, trainable, model.count_params())
        # A checkpoint from the end of the previous stage holds that stage's
        # optimizer; only one from within this stage carries on.
        if not (resumed and model.compiled and state["epoch"] > starts[index]):
            compile_stage(model, recipe, stage, steps_per_epoch=_steps(dataset),
                          accumulate=params.accumulate)
            if _gradual(stage):
                # Slots for every variable that may start training mid-fit.
                freezing.prepare_optimizer(model)
        resumed = False
        history = _fit_stage(recipe, model, dataset, stage, starts[index], state, run_dir, params)
        metrics = {key: values[-1] for key, values in history.history.items()}
        stage_rows.append({
            "name": stage.name, "epochs": stage.epochs, "seconds": time.time() - began,
            "trainable": trainable, "metrics": metrics,
        })
        state["stages"] = stage_rows
        run_dir.write_json("state.json", state)

    return _finish(recipe, model, dataset, stages, starts, stage_rows, state, run_dir)


def find_learning_rate(recipe, stage_number, overrides=None, data=None, output=None, **sweep):
    """Runs `kft.training.lr_finder.find_lr` with stage `stage_number`'s trainable
    selection and optimizer, from the model's initial weights.

    Writes `lr_find.png` and `lr_find.json` into a new run directory.

    Returns:
        `(LRFinderResult, RunDirectory)`.
    """
    from kft.training.lr_finder import find_lr

    params = recipe.resolve(overrides, data=data)
    stages = recipe.build_stages(params)
    if not 1 <= stage_number <= len(stages):
        raise KftError(f"--stage must be 1..{len(stages)} for recipe {recipe.name!r}.")
    stage = stages[stage_number - 1]
    keras.utils.set_random_seed(int(getattr(params, "seed", 0)))
    dataset = recipe.data(params)
    model = recipe.model(params, dataset)
    apply_stage_trainable(model, stage)
    compile_stage(model, recipe, stage, steps_per_epoch=_steps(dataset))
    run_dir = RunDirectory.create(f"{recipe.name}-lr-find", output)
    run_dir.write_json("params.json", vars(params))
    result = find_lr(model, dataset.train, **sweep)
    result.plot(run_dir.path / "lr_find.png")
    run_dir.write_json("lr_find.json", {
        "stage": stage.name, "suggestion": result.suggestion, "valley": result.valley,
        "diverged": result.diverged, "lrs": result.lrs.tolist(), "losses": result.losses.tolist(),
    })
    return result, run_dir


def _linear_probe(recipe, model, dataset, params, run_dir):
    """Reports a new head trained on the frozen pretrained model (the baseline)."""
    began = time.time()
    click.secho("\n== Baseline: linear probe on the frozen pretrained model ==", bold=True)
    reports = evaluation.linear_probe(model, dataset, loss=recipe.loss,
                                      seed=int(getattr(params, "seed", 0)))
    for name, result in reports.items():
        click.echo(f"{name}: accuracy {result.accuracy:.4f}, macro F1 {result.macro_f1:.4f}")
    click.echo(f"({time.time() - began:.0f}s)")
    run_dir.write_json("baseline.json", {
        "kind": "linear_probe",
        "seconds": time.time() - began,
        **{name: result.as_dict() for name, result in reports.items()},
    })


def _drop_unfinished_history(run_dir, epochs_done):
    """Drops history rows of epochs that the checkpoint does not include."""
    if not run_dir.history.is_file():
        return
    lines = run_dir.history.read_text().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(float(line.split(",")[0])) < epochs_done]
    run_dir.publish(run_dir.history, lambda tmp: tmp.write_text("".join(kept)))


def _report_data(dataset):
    skipped = list(getattr(dataset, "skipped", []) or [])
    counts = ""
    if hasattr(dataset, "num_train"):
        counts = f": {dataset.num_train} training, {dataset.num_validation} validation"
        if getattr(dataset, "num_test", 0):
            counts += f", {dataset.num_test} test"
        counts += " examples"
    click.echo(f"Data{counts}, {len(dataset.class_names)} classes")
    if skipped:
        shown = ", ".join(str(path) for path in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        click.echo(f"Skipped {len(skipped)} unreadable file(s): {shown}{more}")


def _stage_starts(stages):
    starts, epoch = [], 0
    for stage in stages:
        starts.append(epoch)
        epoch += stage.epochs
    return starts


def apply_stage_trainable(model, stage):
    """Freezes everything, unfreezes what `stage` trains; returns the count."""
    with warnings.catch_warnings():
        # kft warns about variables a compiled optimizer does not know; the
        # stage compiles a new optimizer right after this.
        warnings.filterwarnings("ignore", message=".*unknown to the model's optimizer")
        freezing.freeze(model)
        freezing.unfreeze(model, select=stage.train, train_bn=stage.train_bn)
    return count_params(model.trainable_variables)


def _fit_stage(recipe, model, dataset, stage, start, state, run_dir, params):
    checkpoint = kft_callbacks.RunCheckpoint(run_dir, state, stage.name, monitor=recipe.monitor)
    # History first: an epoch is only done once the checkpoint and state say so.
    callbacks = [
        kft_callbacks.StageCSVLogger(run_dir.history, stage.name),
        checkpoint,
        keras.callbacks.TensorBoard(log_dir=str(run_dir.path / "tensorboard")),
    ]
    callbacks += list(recipe.callbacks(params)) if recipe.callbacks else []
    callbacks += list(stage.callbacks)
    fit_model, train, validation = _cached_head(model, dataset, stage, params)
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
        class_weight=getattr(dataset, "class_weight", None),
        # The pipeline reshuffles itself each epoch.
        shuffle=False,
        verbose=_verbosity(),
    )


def _cached_head(model, dataset, stage, params):
    """The model and data to fit: the head on cached features where safe."""
    if stage.cache_features is False or _gradual(stage):
        return model, dataset.train, dataset.validation
    safe, reason = feature_cache.can_cache(model)
    if not safe:
        if stage.cache_features:
            raise KftError(f"Stage {stage.name!r} sets cache_features=True, but {reason}")
        return model, dataset.train, dataset.validation
    began = time.time()
    features, head = feature_cache.split_at_head(model)
    feature_cache.compile_head(head, model)
    seed = int(getattr(params, "seed", 0))
    train = feature_cache.cache_features(
        features, feature_cache.preprocessed(model, dataset.train), shuffle=True, seed=seed)
    validation = None
    if dataset.validation is not None:
        validation = feature_cache.cache_features(
            features, feature_cache.preprocessed(model, dataset.validation))
    click.echo(f"Nothing below the head trains: backbone features computed once "
               f"({time.time() - began:.0f}s), the head trains on them")
    return head, train, validation


def _held_out(dataset):
    sets = {"validation": dataset.validation, "test": getattr(dataset, "test", None)}
    return {name: data for name, data in sets.items() if data is not None}


def _classification_reports(model, dataset, held_out, run_dir):
    """Per-class reports of the held-out sets; the confusion matrix of the last."""
    reports = {}
    if len(model.outputs[0].shape) != 2:
        # Not one prediction per example (a tagger): its recipe's metrics
        # (entity F1) are the report.
        return reports
    multi_label = bool(getattr(dataset, "multi_label", False))
    for name, data in held_out.items():
        reports[name] = evaluation.evaluate(model, data, dataset.class_names, multi_label)
    if reports and not multi_label:
        name, last = list(reports.items())[-1]
        evaluation.plot_confusion_matrix(
            last, run_dir.path / "confusion_matrix.png", title=f"Confusion matrix ({name})")
    return reports


def _gradual(stage):
    return any(isinstance(callback, freezing.GradualUnfreezing) for callback in stage.callbacks)


def _steps(dataset):
    steps = int(dataset.train.cardinality())
    if steps <= 0:
        raise KftError("The training data has no known number of batches; use a finite dataset.")
    return steps


def _verbosity():
    # A progress bar for people, a line per epoch for logs and CI.
    return 1 if sys.stdout.isatty() else 2


def _finish(recipe, model, dataset, stages, starts, stage_rows, state, run_dir):
    run_dir.save_model(model, run_dir.final_model)
    metrics = {"final": {}, "best": {recipe.monitor: state.get("best")}, "stages": stage_rows}
    held_out = _held_out(dataset)
    if held_out and not model.compiled:
        compile_for_evaluation(model, recipe)
    prefixes = {"validation": "val_", "test": "test_"}
    for name, data in held_out.items():
        data = distribute.distribute_dataset(data, model.distribute_strategy)
        values = model.evaluate(data, verbose=0, return_dict=True)
        metrics["final"].update({f"{prefixes[name]}{key}": float(v) for key, v in values.items()})
    reports = _classification_reports(model, dataset, held_out, run_dir)
    if reports:
        metrics["evaluation"] = {name: r.as_dict() for name, r in reports.items()}
    baseline = run_dir.path / "baseline.json"
    if baseline.is_file():
        metrics["baseline"] = run_dir.read_json("baseline.json")
    run_dir.write_json("metrics.json", metrics)
    report.plot_curves(
        run_dir.history,
        [(start, stage.name) for start, stage in zip(starts, stages)],
        run_dir.path / "curves.png",
    )
    click.secho("\nSummary", bold=True)
    click.echo(report.summary_table(stage_rows))
    if metrics["final"]:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items())
        click.echo(f"Final: {shown}")
    for name, result in reports.items():
        click.secho(f"\n{name.capitalize()} set", bold=True)
        click.echo(result.format())
        if "baseline" in metrics and name in metrics["baseline"]:
            probe = metrics["baseline"][name]
            click.echo(
                f"Linear probe (frozen pretrained model): accuracy {probe['accuracy']:.4f}, "
                f"macro F1 {probe['macro_f1']:.4f}; fine-tuned: accuracy "
                f"{result.accuracy:.4f}, macro F1 {result.macro_f1:.4f}"
            )
    click.echo(f"Results in {run_dir.path}")
    return RunResult(run_dir=run_dir, model=model, metrics=metrics)
