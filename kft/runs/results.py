"""What a run reports about its model: the baseline before training, the results after.

Before the stages, a recipe may ask for the linear-probe baseline
(`baseline.json`). After them, the final model is evaluated on every
held-out set: the recipe's Keras metrics, per-class reports and the
confusion matrix (`metrics.json`, `confusion_matrix.png`), and the curves of
the whole run are plotted (`curves.png`).
"""

import time

from kft import evaluation
from kft.runs import history
from kft.runs.compiling import compile_for_evaluation
from kft.runs.stages import stage_starts
from kft.training import distribute

BASELINE_FILE = "baseline.json"
_PREFIXES = {"validation": "val_", "test": "test_"}


def linear_probe_baseline(recipe, model, data, params, run_dir):
    """Trains a new head on the frozen pretrained model, writes `baseline.json`.

    Returns:
        `({set name: ClassificationReport}, seconds)`.
    """
    began = time.time()
    reports = evaluation.linear_probe(model, data, loss=recipe.loss,
                                      seed=int(getattr(params, "seed", 0)))
    seconds = time.time() - began
    run_dir.write_json(BASELINE_FILE, {
        "kind": "linear_probe",
        "seconds": seconds,
        **{name: report.as_dict() for name, report in reports.items()},
    })
    return reports, seconds


def final_results(recipe, model, data, stages, stage_rows, state, run_dir):
    """Evaluates the final model on every held-out set and writes the run's results.

    Args:
        recipe: the `kft.Recipe`.
        model: the trained model.
        data: the run's `kft.data.Data`.
        stages: the recipe's stages.
        stage_rows: one summary per stage (name, epochs, seconds, trainable,
            last metrics).
        state: the run's progress (`best` score).
        run_dir: the `RunDirectory`.

    Returns:
        `(metrics, reports)`: what `metrics.json` holds, and the per-class
        `ClassificationReport` of each held-out set.
    """
    metrics = {"final": {}, "best": {recipe.monitor: state.get("best")}, "stages": stage_rows}
    held_out = data.held_out()
    if held_out and not model.compiled:
        compile_for_evaluation(model, recipe)
    for name, batches in held_out.items():
        batches = distribute.distribute_dataset(batches, model.distribute_strategy)
        values = model.evaluate(batches, verbose=0, return_dict=True)
        metrics["final"].update({f"{_PREFIXES[name]}{key}": float(v) for key, v in values.items()})
    reports = _classification_reports(model, data, held_out, run_dir)
    if reports:
        metrics["evaluation"] = {name: r.as_dict() for name, r in reports.items()}
    if (run_dir.path / BASELINE_FILE).is_file():
        metrics["baseline"] = run_dir.read_json(BASELINE_FILE)
    run_dir.write_json("metrics.json", metrics)
    history.plot_curves(
        run_dir.history,
        [(start, stage.name) for start, stage in zip(stage_starts(stages), stages)],
        run_dir.path / "curves.png",
    )
    return metrics, reports


def _classification_reports(model, data, held_out, run_dir):
    """Per-class reports of the held-out sets; the confusion matrix of the last."""
    reports = {}
    if len(model.outputs[0].shape) != 2:
        # Not one prediction per example (a tagger): its recipe's metrics
        # (entity F1) are the report.
        return reports
    for name, batches in held_out.items():
        reports[name] = evaluation.evaluate(model, batches, data.class_names, data.multi_label)
    if reports and not data.multi_label:
        name, last = list(reports.items())[-1]
        evaluation.plot_confusion_matrix(
            last, run_dir.path / "confusion_matrix.png", title=f"Confusion matrix ({name})")
    return reports
