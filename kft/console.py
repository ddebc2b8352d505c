"""Everything kft prints: run progress, summaries, tables, search and export results.

Library functions return results; those that run long (`kft.runs.runner.run`,
`kft.tuning.tune`, `kft.export.serving`) take `verbose=` and report progress
through a `Console`. The CLI prints what commands return through the same
functions, so one module decides what a user reads.
"""

import click


class Console:
    """Prints progress lines when `verbose`, nothing otherwise.

    Args:
        verbose: print (truthy) or stay silent.
    """

    def __init__(self, verbose=True):
        self.verbose = bool(verbose)

    def line(self, text=""):
        if self.verbose:
            click.echo(text)

    def heading(self, text):
        """A bold line after an empty one: a new section."""
        if self.verbose:
            click.secho(f"\n{text}", bold=True)

    def title(self, text):
        """A bold line within a section."""
        if self.verbose:
            click.secho(text, bold=True)

    def warning(self, text):
        if self.verbose:
            click.secho(text, fg="red")

    # ------------------------------------------------------------------ runs

    def run_directory(self, run_dir, resumed_after=None):
        if resumed_after is None:
            self.line(f"Run directory: {run_dir.path}")
        else:
            self.line(f"Resuming {run_dir.path} after epoch {resumed_after}")

    def already_finished(self, run_dir):
        self.line(f"{run_dir.path} is finished: nothing to resume. Its model is "
                  f"{run_dir.final_model}.")

    def interrupted(self, note):
        """A run stopped by Ctrl-C or SIGTERM: what was kept (on stderr)."""
        if self.verbose:
            click.echo(f"Stopped. {note}", err=True)

    def strategy(self, strategy):
        if strategy.num_replicas_in_sync > 1:
            self.line(f"Strategy: {type(strategy).__name__}, {strategy.num_replicas_in_sync} "
                      "replicas (each batch is split between them)")

    def data(self, data):
        counts = ""
        if data.num_train is not None:
            counts = f": {data.num_train} training, {data.num_validation or 0} validation"
            if data.num_test:
                counts += f", {data.num_test} test"
            counts += " examples"
        if data.task == "causal_lm":
            self._instruction_data(data.instructions, counts)
            return
        self.line(f"Data{counts}, {len(data.class_names)} classes")
        if data.skipped:
            shown = ", ".join(str(path) for path in data.skipped[:3])
            more = f" and {len(data.skipped) - 3} more" if len(data.skipped) > 3 else ""
            self.line(f"Skipped {len(data.skipped)} unreadable file(s): {shown}{more}")

    def _instruction_data(self, instructions, counts):
        self.line(f"Data{counts} ({instructions.kind} from {instructions.source}; "
                  f"{instructions.duplicates} duplicates left out)")
        if instructions.skipped:
            more = f" and {len(instructions.skipped) - 1} more" \
                if len(instructions.skipped) > 1 else ""
            self.warning(f"Left out {len(instructions.skipped)} malformed entries: "
                         f"{instructions.skipped[0]}{more}")
        packing = instructions.packing or {}
        if packing.get("prompts_truncated"):
            self.warning(f"{packing['prompts_truncated']} of {packing['examples']} prompts were "
                         "shortened from the start to fit sequence_length (never a response)")
        if packing.get("dropped"):
            self.warning(f"{packing['dropped']} examples whose response alone does not fit "
                         "sequence_length are left out of the loss")

    def float32_outputs(self, layer_names):
        if layer_names:
            self.line(f"Mixed precision: output layer(s) {', '.join(layer_names)} "
                      "compute in float32")

    def stage_header(self, index, count, stage, trainable, total):
        """The banner that opens a stage."""
        detail = (
            f"{stage.epochs} epoch(s), trains {stage.train!r}: {trainable:,} of {total:,} "
            f"parameters, lr {stage.lr:g}"
        )
        if stage.schedule:
            detail += f" ({stage.schedule} schedule)"
        if stage.layer_decay:
            detail += f", layer decay {stage.layer_decay:g}"
        self.heading(f"== Stage {index + 1}/{count}: {stage.name} ==")
        self.line(detail)

    def stopped_early(self, stage, epochs, best_epoch):
        self.line(f"val_loss stopped improving: {stage.name} ended after {epochs} of "
                  f"{stage.epochs} epochs, with the weights of epoch {best_epoch}")

    def cached_features(self, seconds):
        self.line(f"Nothing below the head trains: backbone features computed once "
                  f"({seconds:.0f}s), the head trains on them")

    def baseline(self, reports, seconds):
        """The linear probe's results, before the stages run."""
        self.heading("== Baseline: linear probe on the frozen pretrained model ==")
        for name, result in reports.items():
            self.line(f"{name}: accuracy {result.accuracy:.4f}, macro F1 {result.macro_f1:.4f}")
        self.line(f"({seconds:.0f}s)")

    def base_model(self, baseline, seconds):
        """A causal LM's scores before fine-tuning."""
        self.heading("== Baseline: the model before fine-tuning ==")
        for name in ("validation", "test"):
            if name in baseline:
                self.line(f"{name}: loss {baseline[name]['loss']:.4f}, "
                          f"perplexity {baseline[name]['perplexity']:.2f}")
        generated = baseline.get("generation")
        if generated:
            self.line(f"{generated['examples']} {generated['split']} answers: "
                      f"BLEU {generated['bleu']:.2f}, ROUGE-L {generated['rouge_l']:.4f}")
        self.line(f"({seconds:.0f}s)")

    def forgetting_before(self, name, probe):
        """The pretrained model's score on the forgetting reference."""
        self.heading(f"== Forgetting reference {name}: the pretrained model ==")
        where = "all of it" if probe.split == "all" else f"its {probe.split} split"
        self.line(f"{_probe_text(probe.measure, probe.value)} on {where} ({probe.seconds:.0f}s)")

    def run_summary(self, result):
        """The stage table, final metrics, per-class reports and where it all is.

        Args:
            result: a `kft.runs.runner.RunResult`.
        """
        metrics = result.metrics
        self.heading("Summary")
        self.line(summary_table(metrics["stages"]))
        if metrics["final"]:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics["final"].items())
            self.line(f"Final: {shown}")
        baseline = metrics.get("baseline", {})
        for name, report in result.reports.items():
            self.heading(f"{name.capitalize()} set")
            self.line(report.format())
            if name in baseline:
                probe = baseline[name]
                self.line(
                    f"Linear probe (frozen pretrained model): accuracy {probe['accuracy']:.4f}, "
                    f"macro F1 {probe['macro_f1']:.4f}; fine-tuned: accuracy "
                    f"{report.accuracy:.4f}, macro F1 {report.macro_f1:.4f}"
                )
        if "generation" in metrics:
            self.line(generation_table(metrics))
        forgetting = metrics.get("forgetting")
        if forgetting:
            measure = forgetting["measure"]
            self.line(f"Forgetting ({forgetting['reference']}): "
                      f"{_probe_text(measure, forgetting['before'])} pretrained, "
                      f"{_probe_text(measure, forgetting['after'])} fine-tuned "
                      f"(lost {forgetting['lost']:+.4f})")
        self.line(f"Results in {result.run_dir.path}")

    # ---------------------------------------------------------------- search

    def tune_directory(self, tune_dir, resumed):
        verb = "Resuming the search in" if resumed else "Tune directory:"
        self.line(f"{verb} {tune_dir.path}")

    def search_started(self, config, searched, done, trials):
        self.line(f"{config['tuner'].capitalize()} search of {', '.join(searched)} "
                  f"for the best {config['objective']} ({config['direction']}), "
                  f"{done} of {trials} trial(s) done")

    def trial_started(self, trial_id, values):
        shown = ", ".join(f"{name}={short_value(value)}" for name, value in values.items())
        self.heading(f"=== Trial {trial_id}: {shown} ===")

    def trial_finished_earlier(self, run_path):
        self.line(f"The trial finished before the search stopped: {run_path}")

    def trial_ended(self, row, objective):
        if row.status == "completed":
            self.line(f"Trial {row.trial}: {objective} {row.score:.4f} ({row.seconds:.0f}s)")
        else:
            self.warning(f"Trial {row.trial} failed: {row.message}")

    def search_summary(self, result, names, objective):
        """The trials table, the best trial and its params.

        Args:
            result: a `kft.tuning.TuneResult`.
            names: the searched params, as columns.
            objective: the objective's name.
        """
        self.heading("Trials")
        self.line(trials_table(result.trials, names, objective, result.best))
        if result.best is None:
            self.line("No trial completed: no best parameters.")
        else:
            self.line(f"Best: trial {result.best.trial}, {objective} {result.best.score:.4f}")
        self.line(f"Results in {result.tune_dir.path}")
        if result.best_params is not None:
            best = result.tune_dir.best_params
            self.line(f"Best params: {best} (kft run RECIPE --params {best})")

    def retraining(self, trial):
        self.heading(f"Retraining the best configuration (trial {trial})")

    def retrained(self, run_result):
        self.line(f"Best configuration retrained: {run_result.run_dir.path}")

    # ----------------------------------------------------------- other commands

    def recipe_params(self, recipe):
        """A recipe's hyperparameters, their defaults and the search space."""
        from kft.runs.recipe import RUN_PARAMS

        self.title(f"Recipe {recipe.name!r} hyperparameters (--set KEY=VALUE):")
        params = {**recipe.params,
                  **{k: v for k, v in RUN_PARAMS.items() if k not in recipe.params}}
        width = max((len(key) for key in params), default=0)
        search = recipe.search or {}
        for key, value in params.items():
            shared = "  run param" if key in RUN_PARAMS and key not in recipe.params else ""
            searched = f"  kft tune: {search[key]!r}" if key in search else ""
            self.line(f"  {key.ljust(width)}  {value!r}  ({type(value).__name__})"
                      f"{shared}{searched}")

    def model_plan(self, plan):
        """`kft info`'s layer groups and stage plan (a `kft.runs.inspection.Plan`)."""
        self.heading(f"Model {plan.model_name!r}: {plan.total:,} parameters")
        self.title("Layer groups (input to output):")
        for group in plan.groups:
            self.line(f"  {group.name:<24} {len(group.layers):>4} layers  "
                      f"{group.num_params:>12,} params")
        self.title("Stages:")
        for index, (stage, trainable) in enumerate(plan.stages):
            self.line(
                f"  {index + 1}. {stage.name:<12} {stage.epochs} epoch(s), lr {stage.lr:g}, "
                f"trains {stage.train!r}: {trainable:,} of {plan.total:,} "
                f"({100.0 * trainable / max(plan.total, 1):.1f}%)"
            )

    # ------------------------------------------------------ predict, evaluate

    def predictions(self, found):
        """One line per input: its label and probability (top-K), or its tags."""
        if found.kind == "token":
            for row in found.rows:
                self.line(f"{row.input}: " + " ".join(
                    f"{word}/{tag}" for word, tag in zip(row.text.split(), row.tags)))
        elif found.kind == "generation":
            self.answers([row.text for row in found.rows], [row.answer for row in found.rows])
        else:
            rows = [[row.input if found.kind == "image" else _shortened(row.text)]
                    + [f"{label} {probability:.4f}" for label, probability in row.top]
                    for row in found.rows]
            ranks = max(len(row) for row in rows) - 1
            header = ["input"] + ["label probability" if rank == 0 else f"#{rank + 1}"
                                  for rank in range(ranks)]
            self.line(table(header, rows))
        if found.skipped:
            shown = ", ".join(found.skipped[:3])
            more = f" and {len(found.skipped) - 3} more" if len(found.skipped) > 3 else ""
            self.warning(f"Skipped {len(found.skipped)} unreadable file(s): {shown}{more}")

    def answers(self, prompts, answers):
        """Each prompt and its generated answer (`kft generate`, `kft predict`)."""
        for index, (prompt, answer) in enumerate(zip(prompts, answers)):
            if len(prompts) > 1:
                self.line(f"{'' if index == 0 else chr(10)}> {_shortened(prompt)}")
            self.line(answer)

    def evaluated(self, scored):
        if scored.metrics:
            self.line("Recipe metrics: " + ", ".join(
                f"{key} {value:.4f}" for key, value in scored.metrics.items()))
        if scored.report is not None:
            self.line(scored.report.format())
        if scored.entities is not None:
            self.line(scored.entities.table())
        if scored.skipped:
            self.warning(f"Skipped {len(scored.skipped)} unreadable file(s).")
        self.line(f"{scored.examples} examples; results in {scored.folder}")

    def wise_ft(self, found):
        """`kft wise-ft`'s table: accuracy and macro F1 per alpha, `*` the chosen one."""
        reference = found.reference is not None
        header = ["alpha", "val accuracy", "val macro F1"]
        if reference:
            header += ["ref accuracy", "ref macro F1"]
        rows = []
        for score in found.scores:
            row = [f"{score.alpha:g}{'*' if score.alpha == found.chosen else ''}",
                   f"{score.validation.accuracy:.4f}", f"{score.validation.macro_f1:.4f}"]
            if reference:
                row += [f"{score.reference.accuracy:.4f}", f"{score.reference.macro_f1:.4f}"]
            rows.append(row)
        start = ("the adapters' update scaled by alpha" if found.pretrained == "lora_adapters"
                 else "the recipe's pretrained model, fine-tuned head kept")
        sets = f"{found.validation_examples} validation"
        if reference:
            sets += f" and {found.reference_examples} reference ({found.reference.name})"
        self.line(f"WiSE-FT: {start}; {sets} examples")
        self.line(table(header, rows))
        if found.skipped:
            self.warning(f"Skipped {len(found.skipped)} unreadable reference file(s).")
        why = "best validation accuracy" if found.chosen_by == "validation_accuracy" else "--choose"
        self.line(f"Chosen alpha {found.chosen:g} ({why}): {found.model_file}")
        self.line(f"Results in {found.folder}")

    def suggestion(self, found):
        """The per-group table of `kft suggest` and its recommendation."""
        rows = [[group.name, f"{group.distance:.3f}", f"{group.gradient_norm:.2e}",
                 f"{group.params:,}", "train" if index >= len(found.groups) - found.unfreeze
                 else "frozen"]
                for index, group in enumerate(found.groups)]
        self.line(table(["group", "distance", "rel. grad norm", "params", "suggested"], rows))
        self.line(f"Distance: linear CKA of each group's pooled features with target vs "
                  f"reference ({found.samples} target and {found.reference_samples} reference "
                  f"examples); far from {found.threshold:.2f}.")
        self.line(f"Suggested: train the top {found.unfreeze} of {len(found.groups)} backbone "
                  f"groups ({found.shallowest} up) and the head: "
                  f"Stage(train=\"{found.train}\", layer_decay={found.layer_decay:g}); "
                  f"in kft's image recipes --set unfreeze={found.unfreeze} "
                  f"--set layer_decay={found.layer_decay:g}")

    def learning_rate_found(self, result, run_dir):
        self.line(f"Suggested learning rate: {result.suggestion:.2e} (steepest descent), "
                  f"{result.valley:.2e} (valley)")
        self.line(f"Plot: {run_dir.path / 'lr_find.png'}")

    def exported(self, model_file, path):
        self.line(f"Exported {model_file} to {path}")

    def exported_onnx(self, report, model_file=None):
        """Where an ONNX export went, its sizes and accuracies (a `kft.export.onnx` report)."""
        source = f"{model_file} " if model_file else ""
        self.line(f"Exported {source}to {report.folder} as ONNX "
                  f"(max difference to Keras {report.max_abs_difference:.1e} on "
                  f"{report.checked_examples} inputs)")
        rows = [("float ONNX", report.model_file, report.model_bytes, report.float_accuracy)]
        if report.int8_file is not None:
            rows.append(("int8 ONNX", report.int8_file, report.int8_bytes, report.int8_accuracy))
        self.line("artifact     file               size        val_accuracy")
        for name, path, size, accuracy in rows:
            shown = "not measured" if accuracy is None else f"{accuracy:.4f}"
            self.line(f"{name:<12} {path.name:<18} {size / 1e6:>7.2f} MB   {shown}")

    def measuring_format(self, name):
        """Which format `kft bench` measures now (each takes a fresh process)."""
        from kft.inference.cost import FORMAT_TITLES

        self.line(f"Measuring {FORMAT_TITLES[name]} ...")

    def inference_cost(self, cost):
        """`kft bench`'s table: latency, throughput, memory, size and accuracy per format."""
        machine = cost.machine
        where = f"{machine['cpus']} CPUs" + (f", {len(machine['gpus'])} GPU(s)"
                                             if machine["gpus"] else "")
        inputs = ("labelled validation examples" if cost.labelled
                  else "synthetic inputs, no accuracy")
        self.line(f"Inference cost of {cost.run_dir} ({cost.examples} {inputs}; "
                  f"throughput at batch {cost.batch_size}; {where})")
        rows, notes = [], []
        for row in cost.formats:
            if row.skipped:
                notes.append(f"{row.title}: not measured ({row.skipped})")
                continue
            rows.append([
                row.title, row.inputs, f"{row.size_bytes / 1e6:.2f} MB",
                f"{row.latency_p50_ms:.2f}", f"{row.latency_p95_ms:.2f}",
                f"{row.throughput:.1f}", f"{row.seconds_per_1000:.2f}",
                f"{row.peak_memory_bytes / 2**20:.0f} MiB", f"{row.load_seconds:.1f}",
                "-" if row.accuracy is None else f"{row.accuracy:.4f}",
            ])
        self.line(table(["format", "input", "size", "p50 ms", "p95 ms", "ex/s",
                         "s/1k", "peak memory", "load s", "accuracy"], rows))
        for note in notes:
            self.line(note)
        self.line(f"Latency at batch 1; ex/s and s/1k (seconds per 1,000 predictions) at "
                  f"batch {cost.batch_size}; peak memory of the serving process, runtime "
                  f"included. Written to {cost.report_file}")

    def quantization(self, report):
        """Sizes and accuracies of the float and int8 exports."""
        from kft.export import quantize

        self.line(quantize.format_report(report))

    # -------------------------------------------------------------- tracking

    def tracking_started(self, uri, experiment, run_id, resumed=False):
        """Where a run's MLflow record is (`kft.tracking`)."""
        verb = "continues" if resumed else "logs to"
        self.line(f"MLflow: {verb} run {run_id} of experiment {experiment!r} at {uri}")

    def tracking_failed(self, uri, error):
        """The one warning of a tracking failure; training goes on without it."""
        lines = str(error).strip().splitlines()
        reason = lines[0][:200] if lines else type(error).__name__
        where = uri or "the default store"
        self.warning(f"MLflow tracking at {where} failed and is off for this run "
                     f"({type(error).__name__}: {reason}); training goes on, the run "
                     "directory keeps every result.")


def error(message):
    """A user error, on stderr, in red."""
    click.secho(f"Error: {message}", fg="red", err=True)


# ---------------------------------------------------------------- formatting


def table(header, rows):
    """Formats rows of strings under a header as aligned columns."""
    widths = [max([len(h)] + [len(cells[i]) for cells in rows]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in rows]
    return "\n".join(out)


def summary_table(stage_rows):
    """One row per stage: epochs, time, trainable params, last metrics."""
    metric_names = []
    for row in stage_rows:
        for key in row["metrics"]:
            if key not in metric_names:
                metric_names.append(key)
    lines = [
        [row["name"], str(row["epochs"]), f"{row['seconds']:.0f}s", f"{row['trainable']:,}"]
        + [_metric(row["metrics"].get(name)) for name in metric_names]
        for row in stage_rows
    ]
    return table(["stage", "epochs", "time", "trainable"] + metric_names, lines)


def trials_table(rows, names, objective, best):
    """The trials as `kft tune` prints them; `*` marks the best."""
    header = ["trial", "status", objective, "time", *names]
    lines = []
    for row in rows:
        mark = "*" if best is not None and row is best else ""
        lines.append([
            f"{row.trial}{mark}", row.status,
            "" if row.score is None else f"{row.score:.4f}",
            "" if row.seconds is None else f"{row.seconds:.0f}s",
            *[short_value(row.values.get(name)) for name in names],
        ])
    return table(header, lines)


def short_value(value):
    """A value as tables show it: floats to 4 significant digits."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _shortened(text, width=50):
    """A text cut to `width` characters for a table cell."""
    return text if len(text) <= width else text[:width - 3] + "..."


def _metric(value):
    return "" if value is None else f"{value:.4f}"


def generation_table(metrics):
    """Base against fine-tuned causal LM: perplexity, BLEU, ROUGE-L, and a few answers."""
    generated = metrics["generation"]
    split = generated["split"]
    prefix = "test_" if split == "test" else "val_"
    baseline = metrics.get("baseline", {})
    rows = [("base model", baseline.get(split, {}).get("perplexity"), generated["base"]),
            ("fine-tuned", metrics["final"].get(f"{prefix}perplexity"), generated["fine_tuned"])]
    lines = [f"{split.capitalize()} set: {generated['fine_tuned']['examples']} prompts, "
             f"at most {generated['max_tokens']} new tokens",
             f"{'':<12}{'perplexity':>12}{'BLEU':>8}{'ROUGE-L':>9}"]
    for name, perplexity, scores in rows:
        shown = f"{perplexity:>12.2f}" if perplexity is not None else f"{'-':>12}"
        bleu = f"{scores['bleu']:>8.2f}" if "bleu" in scores else f"{'-':>8}"
        rouge = f"{scores['rouge_l']:>9.4f}" if "rouge_l" in scores else f"{'-':>9}"
        lines.append(f"{name:<12}{shown}{bleu}{rouge}")
    for sample in generated.get("samples", []):
        lines += ["", f"prompt:     {_last_turn(sample['prompt'])}",
                  f"reference:  {sample['reference']}",
                  f"base:       {sample['base']}",
                  f"fine-tuned: {sample['fine_tuned']}"]
    return "\n".join(lines)


def _last_turn(prompt):
    """A chat prompt's last user message, on one line."""
    text = prompt
    for marker in ("<|im_start|>user\n", "user\n"):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    for marker in ("<|im_end|>", "<|im_start|>"):
        text = text.split(marker, 1)[0]
    return " ".join(text.split())


def _probe_text(measure, value):
    """`linear-probe accuracy 0.9410` or `perplexity 23.41`."""
    if measure == "perplexity":
        return f"perplexity {value:.2f}"
    return f"linear-probe accuracy {value:.4f}"
