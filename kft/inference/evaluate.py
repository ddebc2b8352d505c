"""`kft evaluate`: a run's model scored on new labelled data, into the run directory.

Each evaluation gets a new folder `RUN_DIR/evaluations/<data>-<time>/` (an
earlier one is never overwritten) holding `metrics.json` and, for
classifiers, `confusion_matrix.png`.
"""

import dataclasses
import pathlib

import numpy as np
import tensorflow as tf

from kft import evaluation
from kft.data import images as image_data
from kft.data import text as text_data
from kft.errors import KftError
from kft.inference.run_model import load
from kft.runs.run_directory import RunDirectory
from kft.runs.run_directory import new_directory

FOLDER = "evaluations"


@dataclasses.dataclass
class Evaluation:
    """The scores of a run's model on one labelled set.

    Attributes:
        folder: where they were written (`RUN_DIR/evaluations/...`).
        examples: how many labelled examples were scored.
        metrics: the recipe's Keras metrics and loss (when the run holds its
            recipe), e.g. `{"loss": 0.31, "accuracy": 0.9}`.
        report: the per-class `ClassificationReport` (classifiers).
        entities: the `EntityScores` (token runs).
        skipped: image files that could not be read.
    """

    folder: pathlib.Path
    examples: int
    metrics: dict
    report: object = None
    entities: object = None
    skipped: list = dataclasses.field(default_factory=list)


def evaluate(run, data, text_column="text", label_column="label", batch_size=32):
    """Scores a run's final model on labelled data it has not seen.

    Args:
        run: a run directory or a `RunModel`.
        data: an image folder with a subfolder per class (named like the
            run's classes; a subset is fine), a CSV/TSV/JSON Lines file of
            texts and labels, or a CoNLL file for a token run.
        text_column, label_column: the columns of a text file.
        batch_size: examples per forward pass.

    Returns:
        An `Evaluation`.

    Example:
    ```python
    scored = kft.inference.evaluate("runs/cats_dogs-20260101-120000", "new_photos/")
    scored.report.accuracy, scored.folder
    ```
    """
    run = load(run)
    path = pathlib.Path(data)
    if not path.exists():
        raise KftError(f"Labelled data {data} does not exist.")
    if run.kind == "token":
        return _evaluate_tags(run, path, batch_size)
    if run.kind == "image":
        inputs, labels, skipped = labelled_images(path, run)
    else:
        inputs, labels, skipped = labelled_texts(path, run, text_column, label_column)
    batches = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size)
    report = evaluation.evaluate(run.model, batches, run.labels)
    metrics = _recipe_metrics(run, batches)
    folder = new_directory(path.stem or path.name, run.run_dir / FOLDER)
    evaluation.plot_confusion_matrix(report, folder / "confusion_matrix.png",
                                     title=f"Confusion matrix ({path.name})")
    result = Evaluation(folder=folder, examples=len(labels), metrics=metrics, report=report,
                        skipped=skipped)
    _write(result, path, {"evaluation": report.as_dict()})
    return result


def labelled_images(folder, run):
    """`(images, label indices, skipped files)` of a folder with a subfolder per
    class of `run`, decoded as training decodes them; one error for a class the
    run does not have."""
    if not folder.is_dir():
        raise KftError(f"{folder} is not a folder: an image run is evaluated on a folder "
                       "with a subfolder of images per class.")
    classes = sorted(entry for entry in folder.iterdir()
                     if entry.is_dir() and not entry.name.startswith("."))
    unknown = [entry.name for entry in classes if entry.name not in run.labels]
    if unknown:
        raise KftError(
            f"{folder}: class folder(s) {', '.join(unknown)} are not classes of this run "
            f"({', '.join(run.labels)})."
        )
    paths, labels = [], []
    for entry in classes:
        found = image_data.image_files(entry)
        paths += found
        labels += [run.labels.index(entry.name)] * len(found)
    if not paths:
        raise KftError(f"{folder} holds no images in class subfolders named like the run's "
                       f"classes ({', '.join(run.labels)}).")
    pixels, readable = image_data.read_images(paths, run.image_size)
    skipped = [str(path) for path, ok in zip(paths, readable) if not ok]
    if not readable.any():
        raise KftError(f"None of the {len(paths)} image file(s) in {folder} could be read.")
    return pixels[readable], np.array(labels, np.int32)[readable], skipped


def labelled_texts(path, run, text_column, label_column):
    """`(texts, label indices, skipped)` of a CSV/TSV/JSONL file for a text `run`;
    one error for a label the run does not have."""
    if path.is_dir() or path.suffix.lower() in image_data.EXTENSIONS:
        raise KftError(f"{path}: a text run is evaluated on a CSV, TSV or JSON Lines file of "
                       "texts and labels.")
    texts, raw = text_data.read_file(path, text_column=text_column, label_column=label_column)
    index = {name: i for i, name in enumerate(run.labels)}
    unknown = sorted({str(label) for label in raw} - set(index))
    if unknown:
        raise KftError(
            f"{path}: label(s) {', '.join(map(repr, unknown[:5]))} are not classes of this "
            f"run ({', '.join(map(repr, run.labels))})."
        )
    return (np.array(texts, dtype=object).astype(str),
            np.array([index[str(label)] for label in raw], np.int32), [])


def _evaluate_tags(run, path, batch_size):
    from kft.data.token_labels import read_conll
    from kft.models.token_classifier import predict_words

    sentences = read_conll(path)
    unknown = sorted({tag for sentence in sentences for tag in sentence.tags} - set(run.labels))
    if unknown:
        raise KftError(f"{path}: tag(s) {', '.join(unknown[:5])} are not tags of this run "
                       f"({', '.join(run.labels)}).")
    predicted = predict_words(run.model, [sentence.words for sentence in sentences], batch_size)
    scores = evaluation.entities.entity_scores([sentence.tags for sentence in sentences], predicted)
    folder = new_directory(path.stem or path.name, run.run_dir / FOLDER)
    result = Evaluation(folder=folder, examples=len(sentences),
                        metrics={"entity_f1": scores.f1}, entities=scores)
    _write(result, path, {"entities": dataclasses.asdict(scores)})
    return result


def _recipe_metrics(run, batches):
    """The recipe's own loss and metrics, as `kft run` reported them.

    None when the run holds no copy of its recipe, or the copy does not load
    outside its folder (it imports a module that lived beside the original):
    the per-class report does not need it.
    """
    try:
        recipe = run.recipe()
    except KftError:
        return {}
    if recipe is None:
        return {}
    from kft.runs.compiling import compile_for_evaluation

    compile_for_evaluation(run.model, recipe)
    values = run.model.evaluate(batches, verbose=0, return_dict=True)
    return {key: float(value) for key, value in values.items()}


def _write(result, data, details):
    RunDirectory(result.folder).write_json("metrics.json", {
        "data": str(data.resolve()),
        "examples": result.examples,
        "skipped": result.skipped,
        "metrics": result.metrics,
        **details,
    })
