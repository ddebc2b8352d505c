"""kft.inference.wise_ft and `kft wise-ft`: a run mixed with its pretrained start, per alpha."""

import json
import random
import re
import shutil

import keras
import numpy as np
import pytest

from kft import inference
from kft import peft
from kft import saving
from kft.data import images
from kft.errors import KftError
from kft.inference.wise_ft import parse_alphas
from kft.inference.wise_ft import wise_ft
from kft.interpolation import weight_paths
from kft.runs import runner
from kft.runs.recipe import load as load_recipe
from tests.helpers.cli import TINY_TEXT
from tests.helpers.cli import kft


@pytest.fixture
def image_run_copy(image_run, tmp_path):
    """The session's trained tiny image run, copied (wise-ft writes into it),
    and a reference folder of new photos (one file corrupt)."""
    run_dir, new = image_run
    return shutil.copytree(run_dir, tmp_path / run_dir.name), new


def _reference_pixels(run, folder):
    paths = [path for path in images.image_files(folder) if path.name != "broken.jpg"]
    return images.read_images(paths, run.image_size)[0]


def _rebuilt_with_run_head(run):
    """What alpha 0 should be: the recipe's model rebuilt as the run began,
    under the run's fine-tuned head."""
    recipe = run.recipe()
    params = json.loads((run.run_dir / "params.json").read_text())
    keras.utils.set_random_seed(params["seed"])
    resolved = recipe.resolve(params)
    model = recipe.build_model(resolved, recipe.build_data(resolved))
    tuned = weight_paths(run.model)
    for path, variable in weight_paths(model).items():
        if path.startswith("head_"):
            variable.assign(tuned[path])
    return model


def test_each_alpha_is_scored_and_the_best_saved_in_a_new_folder(image_run_copy):
    run_dir, new = image_run_copy
    found = wise_ft(run_dir, [1, 0, 0.5], data=new)

    assert [score.alpha for score in found.scores] == [0.0, 0.5, 1.0]
    assert found.pretrained == "recipe" and found.kept == ["head_dense/kernel", "head_dense/bias"]
    assert found.folder.parent == run_dir / "wise_ft" and found.folder.name.startswith("photos-")
    # Alpha 1 is the run's model: the validation score `kft run` reported.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert found.scores[-1].validation.accuracy == metrics["evaluation"]["validation"]["accuracy"]
    assert found.validation_examples == sum(metrics["evaluation"]["validation"][
        "per_class"][name]["support"] for name in ("cat", "dog"))
    assert found.reference_examples == 6 and found.skipped == [str(new / "cat" / "broken.jpg")]
    best = max(found.scores, key=lambda s: (s.validation.accuracy, s.validation.macro_f1, s.alpha))
    assert found.chosen == best.alpha and found.chosen_by == "validation_accuracy"

    written = json.loads(found.report_file.read_text())
    assert written["chosen_alpha"] == found.chosen and written["alphas"] == [0.0, 0.5, 1.0]
    assert written["reference"]["examples"] == 6 and written["pretrained"] == "recipe"
    assert [row["reference"]["accuracy"] for row in written["scores"]] == [
        score.reference.accuracy for score in found.scores]
    assert found.plot_file.read_bytes()[:4] == b"\x89PNG"
    assert json.loads((found.folder / "labels.json").read_text()) == ["cat", "dog"]
    # The saved model reloads to the chosen mix's outputs, and serves as a run.
    run = inference.load(run_dir)
    pixels = _reference_pixels(run, new)
    np.testing.assert_allclose(saving.load_model(found.model_file, compile=False).predict(
        pixels, verbose=0), found.model.predict(pixels, verbose=0), atol=1e-6)
    assert inference.predict(found.folder, [str(new / "dog")]).rows

    again = wise_ft(run_dir, [0, 1], data=new)
    assert again.folder != found.folder and found.report_file.is_file()


def test_alpha_1_is_the_run_and_alpha_0_its_pretrained_start_under_its_head(image_run_copy):
    run_dir, new = image_run_copy
    run = inference.load(run_dir)
    pixels = _reference_pixels(run, new)

    fine = wise_ft(run, [0, 1], choose="1")
    np.testing.assert_array_equal(fine.model.predict(pixels, verbose=0),
                                  run.model.predict(pixels, verbose=0))
    start = wise_ft(run, [0, 1], choose=0)
    assert start.chosen == 0.0 and start.chosen_by == "choose"
    assert start.folder.name.startswith("validation-")
    np.testing.assert_allclose(start.model.predict(pixels, verbose=0),
                               _rebuilt_with_run_head(run).predict(pixels, verbose=0), atol=1e-6)


def _sentences(count, seed=0):
    rng = random.Random(seed)
    words = {"pos": ["good", "great", "loved", "excellent"], "neg": ["bad", "awful", "hated"]}
    rows = []
    for index in range(count):
        label = ("neg", "pos")[index % 2]
        rows.append(f"{rng.choice(['the movie', 'the food', 'it'])} was "
                    f"{rng.choice(words[label])} .,{label}")
    return "text,label\n" + "\n".join(rows) + "\n"


@pytest.fixture(scope="module")
def lora_text_run(tiny_bert_dir, tmp_path_factory):
    """A one-epoch LoRA run of the tiny BERT recipe, and a reference CSV."""
    root = tmp_path_factory.mktemp("lora_text")
    (root / "reviews.csv").write_text(_sentences(64))
    (root / "shifted.csv").write_text(_sentences(10, seed=5))
    result = runner.run(load_recipe(TINY_TEXT),
                        overrides={"data": str(root / "reviews.csv"), "model": tiny_bert_dir,
                                   "epochs": 1, "baseline": False, "test_split": 0.0},
                        output=str(root / "runs"), verbose=False)
    return result.run_dir.path, root / "shifted.csv"


def test_a_lora_run_scales_its_adapters_and_needs_no_second_model(lora_text_run):
    run_dir, shifted = lora_text_run
    run = inference.load(run_dir)
    found = wise_ft(run, [0, 0.5, 1], data=shifted, choose=0)

    assert found.pretrained == "lora_adapters" and found.reference_examples == 10
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert found.scores[-1].validation.accuracy == metrics["evaluation"]["validation"]["accuracy"]
    assert json.loads(found.report_file.read_text())["weights"]["scaled_adapters"]
    # Called on token ids: a keras-hub task refuses strings in a direct call.
    tokens = run.model.preprocessor(np.array(["the food was awful .", "it was great ."]))
    with peft.without_adapters(run.model):
        base = keras.ops.convert_to_numpy(run.model(tokens, training=False))
    reloaded = saving.load_model(found.model_file, compile=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(reloaded(tokens, training=False)),
                               base, atol=1e-6)
    tuned = keras.ops.convert_to_numpy(run.model(tokens, training=False))
    assert not np.allclose(tuned, base, atol=1e-6)  # the adapters did change the outputs


PARSED = [("0,0.25,0.5,0.75,1", [0, 0.25, 0.5, 0.75, 1]), (" 1, 0 ", [0, 1]), ([0.5], [0.5])]


@pytest.mark.parametrize("text, alphas", PARSED)
def test_alphas_parse_to_a_sorted_list(text, alphas):
    assert parse_alphas(text) == alphas


BAD_ALPHAS = [
    ("", "--alphas is empty"),
    ("0,abc", "--alphas: 'abc' is not a number"),
    ("0,1.5", "--alphas: 1.5 is outside [0, 1]"),
    ("0,-0.5", "--alphas: -0.5 is outside [0, 1]"),
    ("0,nan", "--alphas: alpha must be a finite number, got nan."),
    ("0.5,0.50", "--alphas lists 0.5 twice"),
]


@pytest.mark.parametrize("text, message", BAD_ALPHAS,
                         ids=[case[0] or "empty" for case in BAD_ALPHAS])
def test_bad_alphas_are_one_clear_error(text, message):
    with pytest.raises(KftError, match=re.escape(message)):
        parse_alphas(text)


def test_bad_choices_and_inputs_fail_before_anything_is_written(image_run_copy, tmp_path):
    run_dir, _ = image_run_copy
    with pytest.raises(KftError, match=re.escape("--choose 0.3 is not one of the alphas (0, 1)")):
        wise_ft(run_dir, [0, 1], choose="0.3")
    with pytest.raises(KftError, match=re.escape("--choose 1.5 is not one of the alphas")):
        wise_ft(run_dir, [0, 1], choose=1.5)
    with pytest.raises(KftError, match=re.escape("--choose: 'half' is not a number")):
        wise_ft(run_dir, [0, 1], choose="half")
    with pytest.raises(KftError, match="Reference data .* does not exist"):
        wise_ft(run_dir, [0, 1], data=tmp_path / "missing")
    (run_dir / "recipe.py").unlink()
    with pytest.raises(KftError, match=r"holds no copy of it \(recipe.py\)"):
        wise_ft(run_dir, [0, 1])
    assert not (run_dir / "wise_ft").exists()


# ------------------------------------------------------------------------- CLI


def test_the_command_prints_a_table_and_writes_a_new_folder_per_call(image_run_copy, tmp_path):
    run_dir, new = image_run_copy
    first = kft("wise-ft", run_dir, "--alphas", "0,0.5,1", "--data", new, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    header = r"^alpha\s+val accuracy\s+val macro F1\s+ref accuracy"
    assert re.search(header, first.stdout, re.MULTILINE)
    assert re.search(r"^0\.5\*?\s+\d\.\d{4}", first.stdout, re.MULTILINE)
    assert "Chosen alpha" in first.stdout and "Skipped 1 unreadable" in first.stdout
    second = kft("wise-ft", run_dir, "--alphas", "0,1", "--choose", "0", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Chosen alpha 0 (--choose)" in second.stdout
    folders = sorted((run_dir / "wise_ft").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert {"wise_ft.json", "wise_ft.png", "model.keras", "labels.json"} <= {
            path.name for path in folder.iterdir()}


def test_bad_alphas_on_the_command_line_are_one_line_and_status_2(image_run_copy, tmp_path):
    run_dir, _ = image_run_copy
    result = kft("wise-ft", run_dir, "--alphas", "0,abc", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    expected = ("Error: --alphas: 'abc' is not a number; give numbers in [0, 1] such as "
                "0,0.25,0.5,0.75,1.")
    assert lines == [expected], result.stderr[-3000:]
    assert not (run_dir / "wise_ft").exists()
