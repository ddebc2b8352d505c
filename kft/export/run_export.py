"""`kft export`: a run directory's final model, published for TF Serving or as ONNX."""

import json
import pathlib
import re

from kft.console import Console
from kft.errors import KftError
from kft.runs.run_directory import final_model_of
from kft.export.serving_export import serving

# RunDirectory names runs `<recipe>-<YYYYmmdd-HHMMSS>[-N]`.
_RUN_NAME = re.compile(r"^(?P<recipe>.+)-\d{8}-\d{6}(-\d+)?$")
# A copy of the recipe a run directory may hold; used when none is passed.
RECIPE_COPY = "recipe.py"


def export_run(run_dir, to, name=None, version=None, quantize=None, recipe=None, verbose=False):
    """Exports the final model of a run directory as `to/name/version/`.

    `model.json` records the labels (`labels.json`), the run directory, its
    hyperparameters (`params.json`) and its final validation metrics
    (`metrics.json`).

    Args:
        run_dir: a finished run directory (holding `model.keras`).
        to: the base folder of TF Serving models.
        name: the model name; defaults to the run's recipe name.
        version: a positive integer; `None` takes the next free one.
        quantize: `None` or `"int8"` (see `kft.export.serving`). The
            calibration images come from the run's training data and the
            accuracy before and after from its validation data, rebuilt by
            the recipe with the run's saved hyperparameters.
        recipe: with `quantize`, the recipe the run was trained with: a
            `kft.Recipe` or the path of its file. Defaults to
            `run_dir/recipe.py` when the run directory holds a copy.
        verbose: print the quantization report and where the export went.

    Returns:
        The published version folder, a `pathlib.Path`.

    Example:
    ```python
    kft.export.export_run("runs/flowers-20250101-120000", "models")
    # -> models/flowers/1
    ```
    """
    run = pathlib.Path(run_dir)
    model_file, params, labels, metrics = run_files(run)

    representative = validation = None
    if quantize:
        data = recipe_data(run, params, recipe, "quantize='int8' calibrates on the run's training images")
        representative, validation = data.train, data.validation
    model = load_model(model_file)
    path = serving(
        model, to, name=name or recipe_name(run) or model.name, version=version,
        labels=labels, quantize=quantize, representative_data=representative,
        validation_data=validation, verbose=verbose,
        metadata={
            "source": {
                "run_dir": str(run.resolve()),
                "model_file": model_file.name,
                "params": params,
            },
            "validation": metrics.get("final", {}),
        },
    )
    Console(verbose).exported(model_file, path)
    return path


def export_run_onnx(run_dir, to, name=None, version=None, quantize=None, recipe=None,
                    verbose=False):
    """Exports the final model of a run directory as ONNX, in `to/name/version/`.

    The version folder holds `model.onnx` (and `model_int8.onnx` with
    `quantize`), `labels.json`, `model.json` and, for text runs, `tokenizer/`
    (see `kft.export.onnx`). `BASE/NAME/VERSION/model.onnx` is also the
    layout of a Triton Inference Server model repository; versions are
    published and numbered as for `export_run`.

    Args:
        run_dir: a finished run directory (holding `model.keras`).
        to: the base folder.
        name: the model name; defaults to the run's recipe name.
        version: a positive integer; `None` takes the next free one.
        quantize: `None` or `"int8"`: calibration images come from the run's
            training data and accuracy before and after from its validation
            data, rebuilt by the recipe with the run's saved hyperparameters.
        recipe: with `quantize`, the recipe the run was trained with (a
            `kft.Recipe` or its file); defaults to `run_dir/recipe.py`.
        verbose: print where the export went, sizes and accuracies.

    Returns:
        The `kft.export.onnx_export.OnnxExport` report (`.folder` is the
        version folder).

    Example:
    ```python
    report = kft.export.export_run_onnx("runs/flowers-20250101-120000", "onnx",
                                        quantize="int8")
    # onnx/flowers/1/model.onnx, onnx/flowers/1/model_int8.onnx
    ```
    """
    from kft.export import onnx_export
    from kft.export import versions

    run = pathlib.Path(run_dir)
    model_file, params, labels, metrics = run_files(run)
    model = load_model(model_file)
    folder = versions.model_dir(to, name or recipe_name(run) or model.name)
    versions.check_version(folder, version)
    representative = validation = None
    if quantize:
        data = recipe_data(run, params, recipe, "quantize='int8' calibrates on the run's training images")
        representative, validation = data.train, data.validation
    report = onnx_export.publish(
        model, lambda write: versions.publish_version(folder, version, write), folder,
        labels=labels, quantize=quantize, representative_data=representative,
        validation_data=validation, name=folder.name,
        metadata={
            "source": {"run_dir": str(run.resolve()), "model_file": model_file.name,
                       "params": params},
            "validation": metrics.get("final", {}),
        },
    )
    Console(verbose).exported_onnx(report, model_file)
    return report


def run_files(run):
    """A finished run's model file, params, labels and metrics (what exports record).

    Raises:
        KftError: the run is a causal-LM run, which these formats do not serve.
    """
    if (run / "generation.json").is_file():
        raise KftError(f"{run} is a causal-LM run: export it with --format keras-hub or "
                       "--format transformers (kft.export.export_run_causal_lm).")
    return (final_model_of(run), _read_json(run / "params.json", {}),
            _read_json(run / "labels.json", None), _read_json(run / "metrics.json", {}))


def _read_json(path, default):
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise KftError(
            f"{path} is not valid JSON ({error}); was the run directory edited?"
        ) from error


def recipe_name(run):
    match = _RUN_NAME.match(run.resolve().name)
    return match.group("recipe") if match else None


def recipe_data(run, params, recipe, purpose):
    """The data the run's recipe builds with the run's hyperparameters.

    Args:
        run: the run directory, a `pathlib.Path`.
        params: the run's resolved hyperparameters (`params.json`).
        recipe: a `kft.Recipe`, the path of its file, or `None` for the
            run's copy (`run/recipe.py`).
        purpose: what the data is for, to start the error message with.

    Returns:
        What `recipe.build_data` returns (with `.train` and `.validation`).
    """
    from kft.runs import recipe as recipes

    if recipe is None:
        copy = run / RECIPE_COPY
        if not copy.is_file():
            raise KftError(
                f"{purpose}: pass the recipe the run was trained with (recipe=FILE); "
                f"{run} holds no copy of it ({RECIPE_COPY})."
            )
        recipe = copy
    if not isinstance(recipe, recipes.Recipe):
        recipe = recipes.load(recipe)
    data = recipe.build_data(recipe.resolve(params))
    if getattr(data, "train", None) is None:
        raise KftError(f"Recipe {recipe.name!r} builds no training data to calibrate with.")
    return data


def load_model(path):
    from kft import saving

    try:
        return saving.load_model(path, compile=False)
    except KftError:
        raise
    except Exception as error:  # Keras raises many types for a bad file.
        raise KftError(f"Could not load {path}: {error}") from error
