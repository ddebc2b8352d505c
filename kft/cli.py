"""The `kft` command line: run, tune, info, lr-find, export, predict, generate, evaluate,
bench, wise-ft, drift.

Commands parse their options, call the library and print what it returns
through `kft.console`.
"""

import contextlib
import os
import signal
import sys
import traceback

import click

from kft import console
from kft.console import Console
from kft.errors import KftError


class _RecipeCommand(click.Command):
    """A command whose `--help` also lists the given recipe's hyperparameters."""

    def parse_args(self, ctx, args):
        if any(arg in ("--help", "-h") for arg in args):
            recipe_files = [arg for arg in args if arg.endswith(".py") and os.path.isfile(arg)]
            click.echo(self.get_help(ctx))
            if recipe_files:
                click.echo("")
                Console().recipe_params(_load(recipe_files[0]))
            ctx.exit(0)
        return super().parse_args(ctx, args)


def strategy_option(command):
    """Adds `--strategy NAME` (the `strategy` run param) to a click command."""
    from kft.training.distribute import STRATEGY_NAMES

    return click.option(
        "--strategy", type=click.Choice(STRATEGY_NAMES),
        help="tf.distribute strategy (sets the 'strategy' param; default: the recipe's, 'auto').",
    )(command)


def with_strategy(overrides, strategy):
    """`overrides` plus `strategy=NAME` when `--strategy` was given."""
    return [*overrides, f"strategy={strategy}"] if strategy else list(overrides)


@click.group()
@click.version_option(package_name="kft")
def main():
    """kft: fine-tune pretrained Keras models from recipe files."""


@main.command(cls=_RecipeCommand)
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--data", help="Training data: an image folder, tfds:NAME, ... (sets the 'data' param).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a hyperparameter; repeatable.")
@click.option("--params", "params_file", type=click.Path(dir_okay=False, exists=True),
              help="A JSON file of hyperparameters (kft tune's best_params.json); --set wins.")
@click.option("--output", type=click.Path(file_okay=False), help="Parent folder for the run directory (default runs/).")
@click.option("--resume", type=click.Path(file_okay=False), help="Continue an interrupted run directory.")
@click.option("--force", is_flag=True,
              help="With --resume: continue although the recipe file changed since the run began.")
@strategy_option
@click.option("--track", type=click.Choice(["mlflow"]),
              help="Log the run to MLflow (sets the 'tracking' param; a resumed run keeps its own).")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking server or store (default: $MLFLOW_TRACKING_URI, else "
                   "./mlruns/mlflow.db).")
@click.option("--experiment", metavar="NAME",
              help="MLflow experiment (default: $MLFLOW_EXPERIMENT_NAME, else the recipe's name).")
def run(recipe_file, data, overrides, params_file, output, resume, force, strategy, track,
        tracking_uri, experiment):
    """Fine-tune with RECIPE_FILE; results go to a new run directory.

    Ctrl-C or SIGTERM stops at once; the run directory keeps the last finished
    epoch, and --resume continues from it.
    """
    from kft.runs import runner

    recipe = _load(recipe_file)
    if resume and (overrides or data or params_file or track):
        raise KftError("--resume continues with the run's saved hyperparameters; "
                       "drop --set/--data/--params/--track.")
    if force and not resume:
        raise KftError("--force only applies to --resume.")
    if params_file:
        from kft.runs.recipe import read_params

        overrides = [*read_params(params_file, recipe).items(), *overrides]
    if track:
        overrides = [*overrides, f"tracking={track}"]
    with _sigterm_as_interrupt():
        runner.run(recipe, overrides=with_strategy(overrides, strategy), data=data,
                   output=output, resume=resume, force=force, tracking_uri=tracking_uri,
                   experiment=experiment)


@main.command(cls=_RecipeCommand)
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--trials", default=10, show_default=True,
              help="Trials in all; a resumed search counts those it ran. Caps Hyperband too.")
@click.option("--tuner", type=click.Choice(["random", "bayesian", "hyperband"]),
              help="Search algorithm (default random). Hyperband needs a Budget param.")
@click.option("--objective", help="Metric to optimise at each trial's best epoch (default: the recipe's monitor).")
@click.option("--direction", type=click.Choice(["min", "max"]),
              help="Default: from the recipe's metrics (the loss falls, accuracy rises).")
@click.option("--data", help="Training data for every trial (sets the 'data' param).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Fix an unsearched hyperparameter for every trial; repeatable.")
@click.option("--output", type=click.Path(file_okay=False),
              help="Parent folder for the tune directory and --retrain-best's run (default runs/).")
@click.option("--resume", type=click.Path(file_okay=False, exists=True),
              help="Continue an interrupted search in this tune directory.")
@click.option("--retrain-best", is_flag=True, help="Then train the best configuration as a normal run.")
@click.option("--seed", type=click.IntRange(min=1), help="The tuner's random seed (default: random).")
@click.option("--max-failures", default=3, show_default=True,
              help="Stop after this many failed trials in a row.")
@click.option("--isolate", is_flag=True,
              help="Run each trial in a process of its own: memory stays flat over long searches.")
@strategy_option
def tune(recipe_file, trials, tuner, objective, direction, data, overrides, output, resume,
         retrain_best, seed, max_failures, isolate, strategy):
    """Search RECIPE_FILE's search space; each trial runs the whole recipe."""
    from kft.tuning import tuner as tuning

    tuning.tune(
        _load(recipe_file), trials=trials, tuner=tuner, objective=objective,
        direction=direction, overrides=with_strategy(overrides, strategy), data=data,
        output=output, resume=resume,
        retrain_best=retrain_best, seed=seed, max_failures=max_failures, isolate=isolate,
    )


@main.command()
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--data", help="Training data (sets the 'data' param).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--params-only", is_flag=True, help="Only list the hyperparameters; build nothing.")
def info(recipe_file, data, overrides, params_only):
    """Show RECIPE_FILE's hyperparameters, layer groups and stage plan."""
    recipe = _load(recipe_file)
    Console().recipe_params(recipe)
    if params_only:
        return
    from kft.runs import inspection

    Console().model_plan(inspection.describe(recipe, recipe.resolve(overrides, data=data)))


@main.command(cls=_RecipeCommand)
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--data", help="Training data (sets the 'data' param).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--reference", multiple=True, metavar="PATH",
              help="Images of the pretraining domain (files or folders; repeatable); "
                   "default: crops of everyday photos from scikit-image and scikit-learn.")
@click.option("--samples", default=256, show_default=True, type=click.IntRange(min=2),
              help="Target (and reference) images compared.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False),
              help="Also write the table and the recommendation to this JSON file.")
def suggest(recipe_file, data, overrides, reference, samples, json_file):
    """Recommend how deep to fine-tune RECIPE_FILE's model on its data: each layer
    group's distance from the pretraining domain and its relative gradient norm."""
    import pathlib

    from kft.internal.json_text import dumps
    from kft.runs.suggesting import suggest_for_recipe

    found, _ = suggest_for_recipe(_load(recipe_file), overrides=overrides, data=data,
                                  reference=list(reference), samples=samples)
    Console().suggestion(found)
    if json_file:
        pathlib.Path(json_file).write_text(dumps(found.as_dict()))


@main.command("lr-find", cls=_RecipeCommand)
@click.argument("recipe_file", type=click.Path(dir_okay=False))
@click.option("--stage", default=1, show_default=True, help="Which stage's trainable selection and optimizer to sweep (1-based).")
@click.option("--data", help="Training data (sets the 'data' param).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--output", type=click.Path(file_okay=False), help="Parent folder for the run directory (default runs/).")
@click.option("--steps", default=100, show_default=True, help="Learning rates tried, one per step.")
@click.option("--start-lr", default=1e-7, show_default=True)
@click.option("--end-lr", default=10.0, show_default=True)
def lr_find(recipe_file, stage, data, overrides, output, steps, start_lr, end_lr):
    """Sweep the learning rate for a stage of RECIPE_FILE and suggest one."""
    from kft.runs.lr_find import find_learning_rate

    recipe = _load(recipe_file)
    result, run_dir = find_learning_rate(
        recipe, stage, overrides=overrides, data=data, output=output,
        num_steps=steps, start_lr=start_lr, end_lr=end_lr,
    )
    Console().learning_rate_found(result, run_dir)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--to", "base_dir", required=True, type=click.Path(file_okay=False),
              help="Base folder; the export goes to BASE/NAME/VERSION (TF Serving's layout, "
                   "and Triton's for ONNX).")
@click.option("--format", "export_format",
              type=click.Choice(["serving", "onnx", "keras-hub", "transformers"]),
              default="serving", show_default=True,
              help="serving: a TF Serving SavedModel; onnx: model.onnx (images or token ids "
                   "in); keras-hub / transformers: a causal LM, adapters merged, as a "
                   "keras-hub preset folder or in Hugging Face format.")
@click.option("--name", help="Model name (default: the run's recipe name).")
@click.option("--version", type=int, help="Version number (default: the next free one).")
@click.option("--quantize", type=click.Choice(["int8"]), help="Post-training quantization.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False, exists=True),
              help="The run's recipe, for calibration data (default: RUN_DIR/recipe.py).")
def export(run_dir, base_dir, export_format, name, version, quantize, recipe_file):
    """Export RUN_DIR's model for TF Serving (raw image bytes or strings in), as ONNX, or
    (causal LMs) as a keras-hub preset or in Hugging Face format."""
    from kft.export import export_run, export_run_causal_lm, export_run_onnx

    if export_format in ("keras-hub", "transformers"):
        if quantize:
            raise KftError(f"--quantize does not apply to --format {export_format}.")
        folder = export_run_causal_lm(run_dir, base_dir, export_format, name=name,
                                      version=version)
        Console().line(f"Exported to {folder}")
        return
    exporter = export_run_onnx if export_format == "onnx" else export_run
    exporter(run_dir, base_dir, name=name, version=version, quantize=quantize,
             recipe=recipe_file, verbose=True)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("inputs", nargs=-1)
@click.option("--text", "texts", multiple=True, help="A text to predict (text and token runs); repeatable.")
@click.option("--column", default="text", show_default=True,
              help="The column (key) of CSV/TSV/JSONL inputs holding the text.")
@click.option("--top", default=1, show_default=True, type=click.IntRange(min=1),
              help="Labels to show per input, most likely first.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--output", type=click.Path(dir_okay=False),
              help="Also write the predictions to FILE.csv or FILE.jsonl.")
def predict(run_dir, inputs, texts, column, top, batch_size, output):
    """Predict INPUTS with RUN_DIR's model: image files or folders, or text files
    (a text per line), CSV/JSONL columns and - for stdin."""
    from kft import inference

    if output and not output.endswith((".csv", ".jsonl")):
        raise KftError(f"--output {output}: write predictions to a .csv or .jsonl file.")
    run = inference.load(run_dir)
    with _progress_bar() as progress:
        found = inference.predict(run, inputs, texts=texts, column=column, top=top,
                                  batch_size=batch_size, progress=progress)
    Console().predictions(found)
    if output:
        found.write(output)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.argument("prompts", nargs=-1, required=True)
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(min=1),
              help="At most this many new tokens per answer.")
@click.option("--temperature", type=click.FloatRange(min=0),
              help="Sample at this temperature (default: greedy).")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True),
              help="Nucleus sampling: the smallest set of tokens reaching this probability.")
@click.option("--top-k", type=click.IntRange(min=1), help="Sample among the K most likely tokens.")
@click.option("--seed", type=int, help="Seeds the sampling.")
def generate(run_dir, prompts, max_tokens, temperature, top_p, top_k, seed):
    """Answer PROMPTS with RUN_DIR's causal LM (- reads one prompt per line from stdin),
    each formatted with the chat template the run trained on."""
    from kft import inference

    if prompts == ("-",):
        prompts = tuple(line.rstrip("\n") for line in sys.stdin if line.strip())
        if not prompts:
            raise KftError("No prompts on stdin.")
    answers = inference.generate(run_dir, list(prompts), max_tokens=max_tokens,
                                 temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    Console().answers(list(prompts), answers)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", required=True,
              help="Labelled data: an image folder (a subfolder per class), a CSV/TSV/JSONL "
                   "file of texts and labels, or a CoNLL file for a token run.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
def evaluate(run_dir, data, text_column, label_column, batch_size):
    """Score RUN_DIR's model on new labelled data; results go to RUN_DIR/evaluations/."""
    from kft import inference

    scored = inference.evaluate(run_dir, data, text_column=text_column,
                                label_column=label_column, batch_size=batch_size)
    Console().evaluated(scored)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="Batch size of the throughput measurement (latency is at batch 1).")
@click.option("--format", "formats", multiple=True, metavar="FORMAT",
              help="Measure only these formats (repeatable): keras, saved_model, "
                   "saved_model_int8, tflite, tflite_int8, onnx, onnx_int8.")
@click.option("--seconds", default=3.0, show_default=True, type=click.FloatRange(min=0.01),
              help="About how long each measurement runs per format.")
@click.option("--examples", default=512, show_default=True, type=click.IntRange(min=1),
              help="The most validation examples to run.")
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False, exists=True),
              help="The run's recipe, for validation and calibration data "
                   "(default: RUN_DIR/recipe.py).")
def bench(run_dir, batch_size, formats, seconds, examples, recipe_file):
    """Measure what RUN_DIR's model costs to serve in each export format: latency,
    throughput, peak memory, size and accuracy; writes RUN_DIR/inference.json."""
    from kft import inference

    shown = Console()
    cost = inference.measure_cost(run_dir, batch_size=batch_size, formats=formats or None,
                                  seconds=seconds, max_examples=examples, recipe=recipe_file,
                                  verbose_progress=shown.measuring_format)
    shown.inference_cost(cost)


@main.command("wise-ft")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--alphas", default="0,0.25,0.5,0.75,1", show_default=True,
              help="Comma-separated shares of the fine-tuning to score, in [0, 1] "
                   "(0: the pretrained model, 1: the fine-tuned one).")
@click.option("--data",
              help="A labelled reference set, also scored per alpha: an image folder (a "
                   "subfolder per class) or a CSV/TSV/JSONL file of texts and labels.")
@click.option("--choose", metavar="ALPHA",
              help="The alpha to save as model.keras (default: the best validation accuracy).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False, exists=True),
              help="The run's recipe, to rebuild its data and pretrained model "
                   "(default: RUN_DIR/recipe.py).")
def wise_ft(run_dir, alphas, data, choose, text_column, label_column, batch_size, recipe_file):
    """Interpolate RUN_DIR's model with its pretrained start (WiSE-FT) and score each
    alpha; results and the chosen model go to RUN_DIR/wise_ft/."""
    from kft.inference.wise_ft import parse_alphas
    from kft.inference.wise_ft import wise_ft as interpolate_run

    found = interpolate_run(run_dir, parse_alphas(alphas), data=data, choose=choose,
                            text_column=text_column, label_column=label_column,
                            batch_size=batch_size, recipe=recipe_file)
    Console().wise_ft(found)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--data", "inputs", required=True, multiple=True,
              help="New inputs, as kft predict reads them: image files or folders, or text "
                   "files (a text per line), CSV/TSV/JSONL files or - for stdin; repeatable.")
@click.option("--column", default="text", show_default=True,
              help="The column (key) of CSV/TSV/JSONL inputs holding the text.")
@click.option("--quantile", default=0.99, show_default=True,
              type=click.FloatRange(min=0.5, max=1.0, min_open=True),
              help="The threshold: this quantile of the distances of held-out resamples.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--recipe", "recipe_file", type=click.Path(dir_okay=False, exists=True),
              help="Only for a run without drift_reference.npz: its recipe, to rebuild the "
                   "reference from its data (default: RUN_DIR/recipe.py).")
def drift(run_dir, inputs, column, quantile, batch_size, recipe_file):
    """Check whether new inputs drifted from RUN_DIR's training data: the distance of
    their embeddings, a bootstrap threshold, a verdict; the report goes to
    RUN_DIR/drift/. Exit status 1 on drift, 0 without, 2 on bad input."""
    from kft.inference.drift import FROM_RECIPE
    from kft.inference.drift import drift as check_drift

    found = check_drift(run_dir, list(inputs), column=column, quantile=quantile,
                        batch_size=batch_size, recipe=recipe_file)
    shown = Console()
    if found.reference_source == FROM_RECIPE:
        saved = f"saved as {found.reference_file}" if found.reference_file else "not saved"
        shown.warning("The run held no drift_reference.npz: computed the reference from its "
                      f"recipe's data ({saved}).")
    if found.skipped:
        shown.warning(f"Skipped {len(found.skipped)} unreadable file(s).")
    shown.line(found.table())
    if found.drifted:
        sys.exit(1)


# Inputs above which `kft predict` shows a progress bar.
_LONG_INPUT = 256


@contextlib.contextmanager
def _progress_bar():
    """A progress callback drawing a bar on a terminal's stderr for long inputs."""
    bar = None

    def progress(done, total):
        nonlocal bar
        if bar is None and total > _LONG_INPUT and sys.stderr.isatty():
            bar = click.progressbar(length=total, label="Predicting", file=sys.stderr,
                                    show_pos=True)
        if bar is not None:
            bar.update(done - bar.pos)

    try:
        yield progress
    finally:
        if bar is not None:
            bar.render_finish()


def _load(recipe_file):
    from kft.runs import recipe

    return recipe.load(recipe_file)


class Terminated(KeyboardInterrupt):
    """SIGTERM (schedulers, `docker stop`), handled like Ctrl-C."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    def interrupt(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_point():
    """Console-script entry: user errors become one line and exit status 2.

    `KFT_DEBUG=1` prints the traceback behind such a line too.
    """
    try:
        main.main(standalone_mode=False)
    except KftError as error:
        if os.environ.get("KFT_DEBUG", "") not in ("", "0"):
            traceback.print_exception(error)
        console.error(error)
        sys.exit(2)
    except click.exceptions.Abort as abort:
        if isinstance(abort.__cause__, Terminated):
            click.echo("Terminated (SIGTERM).", err=True)
            sys.exit(128 + signal.SIGTERM)
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(2)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
