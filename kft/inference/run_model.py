"""A run directory's final model, loaded once, with what it takes and predicts."""

import dataclasses
import json
import pathlib

import keras

from kft.runs.run_directory import final_model_of

KINDS = ("image", "text", "token", "causal_lm")


@dataclasses.dataclass
class RunModel:
    """A trained model and what it was trained on.

    Attributes:
        run_dir: the run directory.
        model: the final model (`model.keras`), not compiled.
        labels: class (or tag) names in output order (`labels.json`).
        kind: `"image"` (uint8 pictures in), `"text"` (raw strings in, a
            class out), `"token"` (sentences in, a tag per word out) or
            `"causal_lm"` (prompts in, generated text out).
        image_size: `(height, width)` of an image model, else `None`.
        generation: a causal LM's `generation.json` (how its prompts are
            formatted), else `None`.
    """

    run_dir: pathlib.Path
    model: keras.Model
    labels: list
    kind: str
    image_size: tuple = None
    generation: dict = None

    def recipe(self):
        """The recipe the run was trained with (its copy `recipe.py`), or `None`."""
        from kft.runs import recipe

        copy = self.run_dir / "recipe.py"
        return recipe.load(copy) if copy.is_file() else None


def load(run_dir):
    """Loads the final model of a run directory.

    Args:
        run_dir: a finished run directory (holding `model.keras`).

    Returns:
        A `RunModel`.

    Example:
    ```python
    run = kft.inference.load("runs/cats_dogs-20260101-120000")
    kft.inference.predict(run, ["photos/"]).rows[0].label
    ```
    """
    if isinstance(run_dir, RunModel):
        return run_dir
    from kft import saving

    run_dir = pathlib.Path(run_dir)
    model = saving.load_model(final_model_of(run_dir), compile=False)
    labels_file = run_dir / "labels.json"
    labels = json.loads(labels_file.read_text()) if labels_file.is_file() else None
    kind, image_size = _kind(model)
    generation = None
    if kind == "causal_lm":
        labels = []
        settings = run_dir / "generation.json"
        generation = json.loads(settings.read_text()) if settings.is_file() else {}
    if kind == "token":
        labels = list(model.tags)
    if labels is None:
        labels = [str(index) for index in range(model.outputs[0].shape[-1])]
    return RunModel(run_dir=run_dir, model=model, labels=list(labels), kind=kind,
                    image_size=image_size, generation=generation)


def _kind(model):
    import keras_hub

    if isinstance(model, keras_hub.models.CausalLM):
        return "causal_lm", None
    if hasattr(model, "tags") and getattr(model, "preprocessor", None) is not None:
        return "token", None
    from kft.export.signatures import model_input

    spec = model_input(model)
    return spec.kind, (spec.image_size if spec.kind == "image" else None)
