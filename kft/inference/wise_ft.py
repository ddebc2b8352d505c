"""`kft wise-ft`: a run's model mixed with its pretrained starting point, per alpha.

For each alpha the run's final model is interpolated with the model it
started from (`kft.interpolate`) and scored on the run's validation set
(rebuilt by the run's copy of its recipe) and, when given, on a labelled
reference set. The starting point: for a LoRA run, the model with its
adapters' update scaled by alpha; otherwise the recipe's model rebuilt with
the run's hyperparameters and seed. The head of such a rebuilt model is a
fresh initialisation, not pretrained knowledge, so it keeps its fine-tuned
weights.

Each call writes a new folder `RUN_DIR/wise_ft/<data>-<time>/` (an earlier
one is never overwritten) holding `wise_ft.json` (the scores per alpha and
the choice), `wise_ft.png` (accuracy against alpha), `model.keras` (the
chosen mix: by default the alpha with the best validation accuracy) and
`labels.json`, so `kft predict`, `kft evaluate` and `kft export` take the
folder as they take a run directory.
"""

import dataclasses
import pathlib

import keras
import tensorflow as tf

from kft import evaluation
from kft.errors import KftError
from kft.inference.run_model import load
from kft.interpolation import Interpolation
from kft.interpolation import check_alpha
from kft.interpolation import scaled_adapters
from kft.interpolation import weight_paths
from kft.model_tree import head_layers
from kft.runs.run_directory import RunDirectory
from kft.runs.run_directory import new_directory

FOLDER = "wise_ft"
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)
# How the pretrained starting point was obtained (`WiseFT.pretrained`).
FROM_ADAPTERS = "lora_adapters"
FROM_RECIPE = "recipe"


@dataclasses.dataclass
class AlphaScores:
    """One alpha's scores.

    Attributes:
        alpha: the share of the fine-tuning (0: pretrained, 1: fine-tuned).
        validation: the `ClassificationReport` on the run's validation set.
        reference: the `ClassificationReport` on the reference set, or `None`.
    """

    alpha: float
    validation: object
    reference: object = None


@dataclasses.dataclass
class WiseFT:
    """What `wise_ft` measured and wrote.

    Attributes:
        folder: the new folder (`RUN_DIR/wise_ft/<data>-<time>/`).
        scores: one `AlphaScores` per alpha, ascending.
        chosen: the alpha of the saved model.
        chosen_by: `"validation_accuracy"` (the best, ties to the higher
            macro F1, then the higher alpha) or `"choose"` (asked for).
        pretrained: `"lora_adapters"` (the adapters' update scaled) or
            `"recipe"` (the recipe's model rebuilt, its head kept).
        model: the chosen model (not compiled).
        model_file: its `model.keras`.
        plot_file: `wise_ft.png`.
        report_file: `wise_ft.json`.
        reference: the reference data's path, or `None`.
        validation_examples, reference_examples: examples scored per alpha.
        kept: paths of the weights that keep their fine-tuned values.
        skipped: reference image files that could not be read.
    """

    folder: pathlib.Path
    scores: list
    chosen: float
    chosen_by: str
    pretrained: str
    model: keras.Model
    model_file: pathlib.Path
    plot_file: pathlib.Path
    report_file: pathlib.Path
    reference: pathlib.Path = None
    validation_examples: int = 0
    reference_examples: int = 0
    kept: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)


def parse_alphas(text):
    """The alphas of `--alphas 0,0.25,0.5`: ascending floats in [0, 1].

    Args:
        text: comma-separated numbers (or a sequence of numbers).

    Returns:
        A sorted list of floats.

    Raises:
        KftError: an empty list, a value that is no number or outside
            [0, 1], a value listed twice.
    """
    if isinstance(text, str):
        parts = [part.strip() for part in text.split(",")]
        if not any(parts):
            raise KftError("--alphas is empty: give numbers in [0, 1] such as 0,0.25,0.5,0.75,1.")
        values = [_number(part, "--alphas") for part in parts]
    else:
        values = list(text)
        if not values:
            raise KftError("alphas is empty: give numbers in [0, 1] such as 0, 0.5, 1.")
    alphas = []
    for value in values:
        try:
            alpha = check_alpha(value, allow_extrapolation=True)  # a finite number
        except KftError as error:
            raise KftError(f"--alphas: {error}") from None
        if not 0.0 <= alpha <= 1.0:
            raise KftError(f"--alphas: {alpha:g} is outside [0, 1] (0: the pretrained model, "
                           "1: the fine-tuned one).")
        if alpha in alphas:
            raise KftError(f"--alphas lists {alpha:g} twice.")
        alphas.append(alpha)
    return sorted(alphas)


def wise_ft(run, alphas=DEFAULT_ALPHAS, data=None, choose=None, text_column="text",
            label_column="label", batch_size=32, recipe=None):
    """Scores a run's model interpolated with its pretrained start, per alpha,
    and saves the chosen mix (WiSE-FT).

    Args:
        run: a finished run directory or a `RunModel` of an image or text
            classification run.
        alphas: the alphas to score, in [0, 1] (a sequence, or the CLI's
            comma-separated text).
        data: a labelled reference set as `kft evaluate` reads it (an image
            folder with a subfolder per class, a CSV/TSV/JSON Lines file of
            texts and labels), e.g. a shifted distribution; or `None`.
        choose: the alpha to save (one of `alphas`); `None` saves the one
            with the best validation accuracy.
        text_column, label_column: the columns of a text reference file.
        batch_size: reference examples per forward pass.
        recipe: the recipe the run was trained with (a `kft.Recipe` or its
            file); defaults to the run's copy `recipe.py`.

    Returns:
        A `WiseFT`.

    Raises:
        KftError: bad alphas or `choose`, a token run, missing or unreadable
            reference data, no recipe copy or validation set, a rebuilt
            model whose weights do not match the run's, DoRA adapters.

    Example:
    ```python
    from kft.inference.wise_ft import wise_ft

    found = wise_ft("runs/cats_dogs-20260101-120000", [0, 0.5, 1], data="sketches/")
    found.chosen, [s.reference.accuracy for s in found.scores], found.model_file
    ```
    """
    alphas = parse_alphas(alphas)
    if choose is not None:
        choose = _number(choose, "--choose") if isinstance(choose, str) else choose
        choose = check_alpha(choose, allow_extrapolation=True)  # a finite number
        if choose not in alphas:
            raise KftError(f"--choose {choose:g} is not one of the alphas "
                           f"({', '.join(f'{a:g}' for a in alphas)}).")
    run = load(run)
    if run.kind == "token":
        raise KftError("kft wise-ft scores classifiers (accuracy per alpha); "
                       f"{run.run_dir} is a token-tagging run.")
    reference = _reference(run, data, text_column, label_column, batch_size)
    recipe, params = _recipe(run, recipe)
    keras.utils.set_random_seed(int(params.get("seed", 0)))  # as the run did
    run_data = _run_data(run, params, recipe)

    lora = bool(scaled_adapters(run.model))
    mixer = (Interpolation(None, run.model) if lora else
             Interpolation(_pretrained(run, recipe, params, run_data), run.model,
                           keep="head" if head_layers(run.model) else None))
    scores = [_scored(mixer.at(alpha), alpha, run_data, reference, run.labels)
              for alpha in alphas]
    chosen_by = "validation_accuracy" if choose is None else "choose"
    chosen = _best(scores) if choose is None else choose
    model = mixer.at(chosen)

    path = None if data is None else pathlib.Path(data)
    folder = new_directory((path.stem or path.name) if path else "validation",
                           run.run_dir / FOLDER)
    result = WiseFT(
        folder=folder, scores=scores, chosen=chosen, chosen_by=chosen_by,
        pretrained=FROM_ADAPTERS if lora else FROM_RECIPE, model=model,
        model_file=folder / "model.keras", plot_file=folder / "wise_ft.png",
        report_file=folder / "wise_ft.json", reference=path,
        validation_examples=(run_data.num_validation
                             or int(scores[0].validation.support.sum())),
        reference_examples=0 if reference is None else reference[1],
        kept=list(mixer.kept), skipped=[] if reference is None else reference[2],
    )
    _write(result, run, mixer)
    return result


def _scored(model, alpha, run_data, reference, labels):
    return AlphaScores(
        alpha=alpha,
        validation=evaluation.evaluate(model, run_data.validation, run_data.class_names,
                                       run_data.multi_label),
        reference=None if reference is None else evaluation.evaluate(model, reference[0], labels),
    )


def _number(text, option):
    try:
        return float(text)
    except ValueError:
        raise KftError(f"{option}: {text!r} is not a number; give numbers in [0, 1] "
                       "such as 0,0.25,0.5,0.75,1.") from None


def _reference(run, data, text_column, label_column, batch_size):
    """`(batches, examples, skipped)` of the reference set, or `None`."""
    if data is None:
        return None
    # The readers of `kft evaluate`, so both commands take the same files.
    from kft.inference.evaluate import labelled_images
    from kft.inference.evaluate import labelled_texts

    path = pathlib.Path(data)
    if not path.exists():
        raise KftError(f"Reference data {data} does not exist.")
    if run.kind == "image":
        inputs, labels, skipped = labelled_images(path, run)
    else:
        inputs, labels, skipped = labelled_texts(path, run, text_column, label_column)
    batches = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size)
    return batches, len(labels), skipped


def _recipe(run, recipe):
    """The run's recipe (its copy unless given) and its saved params."""
    from kft.export.run_export import RECIPE_COPY
    from kft.export.run_export import run_files
    from kft.runs import recipe as recipes

    params = run_files(run.run_dir)[1]
    if recipe is None:
        copy = run.run_dir / RECIPE_COPY
        if not copy.is_file():
            raise KftError(
                f"kft wise-ft rebuilds the run's validation data with its recipe: pass the "
                f"recipe the run was trained with (--recipe FILE); {run.run_dir} holds no copy "
                f"of it ({RECIPE_COPY})."
            )
        recipe = copy
    if not isinstance(recipe, recipes.Recipe):
        recipe = recipes.load(recipe)
    return recipe, params


def _run_data(run, params, recipe):
    from kft.export.run_export import recipe_data

    data = recipe_data(run.run_dir, params, recipe,
                       "kft wise-ft scores each alpha on the run's validation data")
    if data.validation is None:
        raise KftError(f"Recipe {recipe.name!r} builds no validation set for {run.run_dir}; "
                       "kft wise-ft chooses the alpha on it.")
    if list(data.class_names) != list(run.labels):
        raise KftError(
            f"The recipe's data has classes {list(data.class_names)[:10]}, the run's model "
            f"{run.labels[:10]}: is the training data still where params.json says?"
        )
    return data


def _pretrained(run, recipe, params, data):
    """The recipe's model rebuilt: the run's starting point (pretrained weights,
    a fresh head), with exactly the run's weight paths."""
    model = recipe.build_model(recipe.resolve(params), data)
    ours, theirs = weight_paths(run.model), weight_paths(model)
    missing = [path for path in ours if path not in theirs]
    if missing:
        raise KftError(
            f"The recipe rebuilds a model without the run's weights {missing[:3]} (it has e.g. "
            f"{list(theirs)[:3]}): the recipe or its params changed since the run, or the "
            "model has automatically named layers (name them, or run kft wise-ft in a fresh "
            "process)."
        )
    return model


def _best(scores):
    """The alpha with the best validation accuracy; ties go to the higher
    macro F1, then to the higher alpha (the model that was validated)."""
    best = max(scores, key=lambda s: (s.validation.accuracy, s.validation.macro_f1, s.alpha))
    return best.alpha


def _write(result, run, mixer):
    folder = RunDirectory(result.folder)
    folder.save_model(result.model, result.model_file)
    folder.write_json("labels.json", list(run.labels))
    folder.write_json(result.report_file.name, {
        "run_dir": str(run.run_dir.resolve()),
        "pretrained": result.pretrained,
        "alphas": [score.alpha for score in result.scores],
        "chosen_alpha": result.chosen,
        "chosen_by": result.chosen_by,
        "model_file": result.model_file.name,
        "validation": {"examples": result.validation_examples},
        "reference": None if result.reference is None else {
            "data": str(result.reference.resolve()),
            "examples": result.reference_examples,
            "skipped": result.skipped,
        },
        "weights": {"mixed": len(mixer.mixed), "kept": mixer.kept,
                    "scaled_adapters": mixer.scaled},
        "scores": [{
            "alpha": score.alpha,
            "validation": score.validation.as_dict(),
            "reference": None if score.reference is None else score.reference.as_dict(),
        } for score in result.scores],
    })
    folder.publish(result.plot_file, lambda tmp: _plot(result, tmp))


def _plot(result, target):
    # The object-oriented API with the Agg canvas leaves pyplot's global
    # backend alone (as kft's LR finder plot).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    alphas = [score.alpha for score in result.scores]
    axes.plot(alphas, [s.validation.accuracy for s in result.scores], "o-",
              color="tab:blue", label="validation")
    if result.reference is not None:
        axes.plot(alphas, [s.reference.accuracy for s in result.scores], "s-",
                  color="tab:orange", label=f"reference ({result.reference.name})")
    axes.axvline(result.chosen, color="grey", linestyle=":",
                 label=f"chosen alpha {result.chosen:g}")
    axes.set_xlabel("alpha (0: pretrained, 1: fine-tuned)")
    axes.set_ylabel("accuracy")
    low, high = axes.get_ylim()
    axes.set_ylim(max(low, -0.02), min(high, 1.02))  # no axis past what accuracy can be
    axes.set_title("WiSE-FT: weight interpolation")
    axes.legend()
    figure.tight_layout()
    figure.savefig(target, format="png")
