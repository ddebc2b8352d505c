"""`kft suggest`: a recipe's model measured against the pretraining domain on its data."""

import keras

from kft.data import images as image_data
from kft.errors import KftError
from kft.inference.inputs import image_paths
from kft.suggestion import suggest


def suggest_for_recipe(recipe, overrides=None, data=None, reference=None, samples=256):
    """Builds `recipe`'s data and model and runs `kft.suggest` on its training data.

    Args:
        recipe: a `kft.Recipe` of an image classifier.
        overrides, data: as for `kft.runs.runner.run`.
        reference: image files or folders of the pretraining domain (a list of
            paths), or `None` for kft's photos (`kft.data.datasets.reference_photos`).
        samples: target (and reference) images compared.

    Returns:
        `(Suggestion, params)`: the suggestion and the resolved params.
    """
    params = recipe.resolve(overrides, data=data)
    seed = int(getattr(params, "seed", 0))
    keras.utils.set_random_seed(seed)
    dataset = recipe.build_data(params)
    if getattr(dataset, "task", None) != "image_classification":
        raise KftError(f"kft suggest measures image classifiers; recipe {recipe.name!r} "
                       "is not one.")
    model = recipe.build_model(params, dataset)
    found = None
    if reference:
        size = tuple(dataset.train.element_spec[0].shape[1:3])
        paths = image_paths(reference)
        found, readable = image_data.read_images(paths, size)
        if not readable.any():
            raise KftError(f"None of the {len(paths)} reference images could be read.")
        found = found[readable][:samples]
    return suggest(model, dataset.train, reference=found, samples=samples, seed=seed), params
