"""`kft suggest`: a recipe's model measured against the pretraining domain on its data."""

import keras

from kft.data import images as image_data
from kft.errors import KftError
from kft.inference.inputs import image_paths
from kft.inference.inputs import texts
from kft.suggestion import suggest


def suggest_for_recipe(recipe, overrides=None, data=None, reference=None, samples=256):
    """Builds `recipe`'s data and model and runs `kft.suggest` on its training data.

    Args:
        recipe: a `kft.Recipe` of an image or text classifier.
        overrides, data: as for `kft.runs.runner.run`.
        reference: examples of the pretraining domain, a list of paths: image
            files or folders, or text files (a line per text; CSV/JSONL: the
            `text` column); `None` for kft's photos or sentences
            (`kft.data.datasets.reference_photos`, `reference_sentences`).
        samples: target (and reference) images compared.

    Returns:
        `(Suggestion, params)`: the suggestion and the resolved params.
    """
    params = recipe.resolve(overrides, data=data)
    seed = int(getattr(params, "seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = recipe.build_data(params)
    task = getattr(dataset, "task", None)
    if task not in ("image_classification", "text_classification"):
        raise KftError(f"kft suggest measures image and text classifiers; recipe "
                       f"{recipe.name!r} is not one.")
    model = recipe.build_model(params, dataset)
    found = None
    if reference and task == "text_classification":
        found = _reference_texts(reference)[:samples]
    elif reference:
        size = tuple(dataset.train.element_spec[0].shape[1:3])
        paths = image_paths(reference)
        found, readable = image_data.read_images(paths, size)
        if not readable.any():
            raise KftError(f"None of the {len(paths)} reference images could be read.")
        found = found[readable][:samples]
    return suggest(model, dataset.train, reference=found, samples=samples, seed=seed), params


def _reference_texts(paths):
    """The non-empty lines of text files (or a CSV/JSONL `text` column), as `kft predict` reads them."""
    found, _ = texts(paths)
    if len(found) < 2:
        raise KftError(f"{', '.join(map(str, paths))} holds {len(found)} text(s); the reference "
                       "needs at least 2.")
    return found
