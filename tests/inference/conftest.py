"""Run directories to predict with and evaluate: trained once per session."""

import json

import keras
import pytest

from kft.models import text
from kft.models.token_classifier import token_classifier
from kft.runs import runner
from kft.runs.recipe import load as load_recipe
from tests.helpers.cli import TINY, write_pet_images

TAGS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


@pytest.fixture(scope="session")
def image_run(tmp_path_factory):
    """A trained tiny image run, and new photos in nested folders (one corrupt)."""
    root = tmp_path_factory.mktemp("image_run")
    write_pet_images(root / "pets")
    result = runner.run(load_recipe(TINY), overrides={"head_epochs": 2, "finetune_epochs": 1},
                        data=str(root / "pets"), output=str(root / "runs"), verbose=False)
    new = write_pet_images(root / "new" / "photos", per_class=3)
    (new / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    return result.run_dir.path, new


def saved_run(folder, model, labels):
    """A run directory holding only what predict needs: model.keras, labels.json."""
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


@pytest.fixture(scope="session")
def text_run(tiny_bert_dir, tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = text.text_classifier(tiny_bert_dir, num_classes=3, sequence_length=12)
    return saved_run(tmp_path_factory.mktemp("text") / "run", model, ["neg", "neutral", "pos"])


@pytest.fixture(scope="session")
def token_run(tiny_bert_dir, tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = token_classifier(tiny_bert_dir, TAGS, sequence_length=12)
    return saved_run(tmp_path_factory.mktemp("token") / "run", model, TAGS)
