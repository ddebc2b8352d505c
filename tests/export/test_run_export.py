"""export_run: a real run directory's final model, exported with its labels, params and metrics."""

import json
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow as tf

import kft.export
from kft.runs import recipe as recipes
from kft.runs import runner
from kft.errors import KftError
from tests.helpers.tiny_models import random_images

RECIPE = '''
import kft
from kft.data import images
from tests.helpers.tiny_models import random_images, tiny_image_model

x, y = random_images(48)
recipe = kft.Recipe(
    name="tiny",
    params=dict(seed=0, batch_size=8, lr=0.05),
    data=lambda p: images.from_arrays(x, y, batch_size=p.batch_size, seed=p.seed,
                                      class_names=["dark", "mid", "bright"]),
    model=lambda p, data: tiny_image_model(len(data.class_names)),
    stages=lambda p: [kft.Stage("all", epochs=3, train="all", lr=p.lr)],
)
'''


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    recipe_file = root / "tiny_recipe.py"
    recipe_file.write_text(RECIPE)
    result = runner.run(recipes.load(recipe_file), overrides=["lr=0.04"], output=root / "runs")
    return result, recipe_file


def test_final_model_is_exported_with_the_runs_record(run, tmp_path):
    result, _ = run
    run_dir = result.run_dir.path
    path = kft.export.export_run(run_dir, tmp_path)
    assert path == tmp_path / "tiny" / "1"  # The recipe's name, from the run directory's.
    card = json.loads((path / "model.json").read_text())
    assert card["labels"] == ["dark", "mid", "bright"]
    assert card["source"]["run_dir"] == str(run_dir.resolve())
    assert card["source"]["params"]["lr"] == 0.04
    assert card["validation"] == result.metrics["final"]
    assert card["quantization"] is None
    images = random_images(5, seed=4)[0]
    served = tf.saved_model.load(str(path)).signatures["predict_images"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(),
                               result.model.predict(images, verbose=0), atol=1e-5, rtol=0)


def test_int8_calibrates_on_the_runs_training_data(run, tmp_path):
    result, recipe_file = run
    copy = tmp_path / "run"
    shutil.copytree(result.run_dir.path, copy)
    # The runner keeps a copy of the recipe; without it, int8 needs one passed.
    assert (copy / "recipe.py").read_text() == pathlib.Path(recipe_file).read_text()
    (copy / "recipe.py").unlink()
    with pytest.raises(KftError, match=r"pass the recipe the run was trained with"):
        kft.export.export_run(copy, tmp_path / "models", quantize="int8")
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*.pb"))

    shutil.copy(recipe_file, copy / "recipe.py")
    path = kft.export.export_run(copy, tmp_path / "models", name="shapes", version=5,
                                 quantize="int8")
    assert path == tmp_path / "models" / "shapes" / "5"
    report = json.loads((path / "model.json").read_text())["quantization"]
    recipe = recipes.load(recipe_file)
    data = recipe.data(recipe.resolve({"lr": 0.04}))
    validation = sum(len(labels) for _, labels in data.validation)
    assert report["validation_examples"] == validation
    assert report["int8_tflite"]["calibration_examples"] > 0
    assert report["float_saved_model"]["val_accuracy"] == pytest.approx(
        result.metrics["final"]["val_accuracy"], abs=1e-6)


def test_a_folder_without_a_model_is_refused(tmp_path):
    with pytest.raises(KftError, match=r"holds no model.keras: pass a finished run directory"):
        kft.export.export_run(tmp_path, tmp_path / "models")
