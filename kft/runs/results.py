"""What a run reports about its model: the baseline before training, the results after.

Before the stages, a recipe may ask for the linear-probe baseline
(`baseline.json`). After them, the final model is evaluated on every
held-out set: the recipe's Keras metrics, per-class reports and the
confusion matrix (`metrics.json`, `confusion_matrix.png`), and the curves of
the whole run are plotted (`curves.png`).

A causal-LM run always has a baseline: before the stages the model as
loaded (LoRA adapters start as a no-op) is scored on the held-out sets
(loss and perplexity) and answers held-out prompts, scored with BLEU and
ROUGE-L against the reference answers. After the stages the fine-tuned
model does the same; `metrics.json` holds both, `samples.jsonl` every
prompt with its reference, base and fine-tuned answers, and
`generation.json` how prompts are formatted, for `kft generate`.

A recipe with a `forgetting` reference has the model scored on it before
the stages and after them (`forgetting.json`, `metrics["forgetting"]`).
"""

import json
import time

from kft import evaluation
from kft.runs import history
from kft.runs.compiling import compile_for_evaluation
from kft.runs.compiling import is_causal_lm
from kft.runs.stages import stage_starts
from kft.training import distribute

BASELINE_FILE = "baseline.json"
FORGETTING_FILE = "forgetting.json"
GENERATION_FILE = "generation.json"
SAMPLES_FILE = "samples.jsonl"
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


def forgetting_before(recipe, model, forgetting, params, run_dir):
    """Scores the pretrained model on the forgetting reference, writes `forgetting.json`.

    Args:
        forgetting: `(name, reference data)` from `Recipe.build_forgetting`.

    Returns:
        `(name, kft.evaluation.forgetting.Probe)`.
    """
    name, reference = forgetting
    if is_causal_lm(model) and not model.compiled:
        compile_for_evaluation(model, recipe)
    before = evaluation.forgetting.probe(model, reference, seed=int(getattr(params, "seed", 0)))
    run_dir.write_json(FORGETTING_FILE, {
        "reference": name, "measure": before.measure, "split": before.split,
        "before": before.value, "before_seconds": before.seconds})
    return name, before


def _forgetting_after(model, forgetting, params, run_dir, metrics):
    """Scores the fine-tuned model on the reference; `forgetting.json` gains both scores."""
    saved = run_dir.read_json(FORGETTING_FILE)
    after = evaluation.forgetting.probe(model, forgetting[1],
                                        seed=int(getattr(params, "seed", 0)))
    before = evaluation.forgetting.Probe(saved["measure"], saved["before"], saved["split"],
                                         saved["before_seconds"])
    result = evaluation.forgetting.Forgetting(saved["reference"], before, after).as_dict()
    run_dir.write_json(FORGETTING_FILE, result)
    metrics["forgetting"] = result


def write_generation_settings(data, run_dir):
    """Writes `generation.json`: how the run formats prompts (for `kft generate`)."""
    instructions = data.instructions
    run_dir.write_json(GENERATION_FILE, {
        "kind": instructions.kind,
        "chat_format": bool(instructions.chat_format) and instructions.kind != "text",
        "system_prompt": instructions.system_prompt,
    })


def base_model_baseline(recipe, model, data, params, run_dir):
    """Scores the causal LM before fine-tuning, writes `baseline.json`.

    Returns:
        `(baseline, seconds)`: what `baseline.json` holds, and the time taken.
    """
    began = time.time()
    compile_for_evaluation(model, recipe)
    baseline = {"kind": "base_model", **_held_out_perplexity(model, data)}
    generated = _answer_held_out(recipe, model, data, params)
    if generated is not None:
        baseline["generation"] = generated
    baseline["seconds"] = time.time() - began
    run_dir.write_json(BASELINE_FILE, baseline)
    return baseline, baseline["seconds"]


def _held_out_perplexity(model, data):
    return {name: {"loss": values["loss"],
                   "perplexity": evaluation.generation.perplexity(values["loss"])}
            for name, values in _evaluate_held_out(model, data.held_out()).items()}


def _evaluate_held_out(model, held_out):
    """`{set name: {metric: value}}`: the compiled model's metrics on each held-out set."""
    values = {}
    for name, batches in held_out.items():
        batches = distribute.distribute_dataset(batches, model.distribute_strategy)
        found = model.evaluate(batches, verbose=0, return_dict=True)
        values[name] = {key: float(value) for key, value in found.items()}
    return values


def _answer_held_out(recipe, model, data, params):
    """The model's answers to the run's held-out prompts, with their scores, or `None`
    (plain-text data has no prompts)."""
    from kft.models.generation import generate

    instructions = data.instructions
    options = recipe.generation_for(params)
    split = options["split"] or ("test" if instructions.test else "validation")
    if instructions.kind == "text" or not instructions.examples(split) or not options["prompts"]:
        return None
    prompts, references = instructions.formatted(model, split=split)
    prompts, references = prompts[:options["prompts"]], references[:options["prompts"]]
    sampling = {key: options[key] for key in ("temperature", "top_p", "top_k", "seed")}
    answers = generate(model, prompts, max_tokens=options["max_tokens"], **sampling)
    references = [_without_special_tokens(model, text) for text in references]
    scores = evaluation.generation.score_generations(answers, references)
    return {"split": split, "max_tokens": options["max_tokens"], **scores.as_dict(),
            "prompts": prompts, "references": references, "answers": answers}


def _without_special_tokens(model, text):
    """A reference as an answer reads: without the end-of-turn and other special tokens."""
    tokenizer = model.preprocessor.tokenizer
    for token_id in getattr(tokenizer, "special_token_ids", ()) or ():
        token = tokenizer.id_to_token(int(token_id))
        if token:
            text = text.replace(token, "")
    return text.strip()


def _generation_results(recipe, model, data, params, metrics, run_dir):
    """Adds the fine-tuned model's perplexity and answers to `metrics`; writes the samples."""
    for name, batches in data.held_out().items():
        loss = metrics["final"].get(f"{_PREFIXES[name]}loss")
        if loss is not None:
            metrics["final"][f"{_PREFIXES[name]}perplexity"] = \
                evaluation.generation.perplexity(loss)
    if data.instructions.packing:
        metrics["packing"] = dict(data.instructions.packing)
    baseline = run_dir.read_json(BASELINE_FILE) if (run_dir.path / BASELINE_FILE).is_file() \
        else {}
    generated = _answer_held_out(recipe, model, data, params)
    if generated is None:
        return
    base = baseline.get("generation", {})
    scores = ("bleu", "rouge_l", "examples", "empty")
    metrics["generation"] = {
        "split": generated["split"], "max_tokens": generated["max_tokens"],
        "fine_tuned": {key: generated[key] for key in scores},
        "base": {key: base[key] for key in scores if key in base},
    }
    rows = []
    base_answers = base.get("answers", [])
    for i, (prompt, reference, answer) in enumerate(zip(
            generated["prompts"], generated["references"], generated["answers"])):
        rows.append({"prompt": prompt, "reference": reference,
                     "base": base_answers[i] if i < len(base_answers) else None,
                     "fine_tuned": answer})
    run_dir.write_text(SAMPLES_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n"
                                             for row in rows))
    metrics["generation"]["samples"] = rows[:3]


def final_results(recipe, model, data, stages, stage_rows, state, run_dir, params=None,
                  forgetting=None):
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
        params: the run's params (a causal LM's generation options).
        forgetting: `(name, reference data)` when the recipe measures
            forgetting and `forgetting.json` holds the score before.

    Returns:
        `(metrics, reports)`: what `metrics.json` holds, and the per-class
        `ClassificationReport` of each held-out set.
    """
    metrics = {"final": {}, "best": {recipe.monitor: state.get("best")}, "stages": stage_rows}
    held_out = data.held_out()
    if held_out and not model.compiled:
        compile_for_evaluation(model, recipe)
    for name, values in _evaluate_held_out(model, held_out).items():
        metrics["final"].update({f"{_PREFIXES[name]}{key}": v for key, v in values.items()})
    if data.task == "causal_lm":
        _generation_results(recipe, model, data, params, metrics, run_dir)
    reports = _classification_reports(model, data, held_out, run_dir)
    if reports:
        metrics["evaluation"] = {name: r.as_dict() for name, r in reports.items()}
    if (run_dir.path / BASELINE_FILE).is_file():
        metrics["baseline"] = run_dir.read_json(BASELINE_FILE)
    if forgetting is not None and (run_dir.path / FORGETTING_FILE).is_file():
        _forgetting_after(model, forgetting, params, run_dir, metrics)
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
