"""kft.inference.drift and `kft drift`: shifted inputs are flagged, fresh ones are not."""

import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image
from scipy.stats import wasserstein_distance

from kft import inference
from kft.data import images
from kft.data import text as text_data
from kft.errors import KftError
from kft.inference.drift import FROM_RECIPE
from kft.inference.drift import FROM_RUN
from kft.inference.drift import REFERENCE_FILE
from kft.inference.drift import SUMMARY_FILE
from kft.inference.drift import DriftReference
from kft.inference.drift import compute_reference
from kft.inference.drift import drift
from kft.inference.drift import embedding_model
from kft.inference.drift import sliced_wasserstein
from kft.inference.drift import store_reference
from kft.training.feature_cache import split_at_head
from tests.helpers.cli import entry_point

# New photos per class: enough that a class-mix wobble is not a drift.
PER_CLASS = 30


def pet_photos(folder, seed, per_class=PER_CLASS, bases=(40, 200), change=None):
    """Photos drawn as `write_pet_images` draws the training ones (cat: dark,
    dog: bright, 20x24 pixels, noise), from another seed; `change` alters the
    pixels (a float array) before they are saved."""
    folder = pathlib.Path(folder)
    rng = np.random.default_rng(seed)
    for name, base in zip(("cat", "dog"), bases):
        (folder / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = (base + rng.integers(-30, 30, (20, 24, 3))).astype("float32")
            pixels = change(pixels, rng) if change else pixels
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(
                folder / name / f"{index}.png")
    return folder


SHIFTS = {
    "brighter": dict(change=lambda pixels, rng: pixels + 60),
    "lower_contrast": dict(change=lambda pixels, rng: (pixels - 128) * 0.5 + 128),
    # Another dataset: the same sizes, other pictures.
    "other_colours": dict(bases=(120, 160)),
    "noise": dict(change=lambda pixels, rng: rng.integers(0, 256, pixels.shape)),
}


@pytest.fixture(scope="module")
def pet_run(image_run, tmp_path_factory):
    """A copy of the session's trained image run whose drift reference was
    embedded from a larger sample of its training distribution (80 photos,
    half held out), so the bootstrap has held-out data to resample."""
    root = tmp_path_factory.mktemp("drift_pets")
    run_dir = shutil.copytree(image_run[0], root / image_run[0].name)
    data = images.load(str(pet_photos(root / "pets", seed=10, per_class=40)),
                       image_size=(16, 16), validation_split=0.5, seed=0)
    store_reference(inference.load(run_dir).model, data, run_dir)
    return run_dir, root


def test_the_sliced_distance_is_scipys_wasserstein_averaged_over_projections():
    rng = np.random.default_rng(0)
    for n, m in ((1, 1), (5, 9), (40, 23)):
        a, b = rng.normal(size=(n, 7)), rng.normal(0.5, 2.0, size=(m, 7))
        a[0] = b[0]  # ties between the samples
        expected = np.mean([wasserstein_distance(a[:, k], b[:, k]) for k in range(7)])
        assert sliced_wasserstein(a, b) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(a, a) == 0.0


def test_the_reference_holds_seeded_penultimate_embeddings_of_both_sets(pet_run):
    run_dir, _ = pet_run
    run = inference.load(run_dir)
    reference = DriftReference.load(run_dir)
    assert (len(reference.train), len(reference.held_out), reference.dim) == (40, 40, 8)
    assert reference.calibration == "validation" and reference.layer == "head_dense"
    assert reference.labels == ["cat", "dog"] and not reference.multi_label
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["train_samples"] == 40 and summary["train_shares"] == [0.5, 0.5]
    assert not list(run_dir.glob(".*.tmp*"))
    # The embeddings are what the head reads: the pooled backbone features.
    features = split_at_head(run.model)[0]
    extractor, layer = embedding_model(run.model)
    assert layer == "head_dense"
    pixels = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3)).astype("uint8")
    embedded, outputs = extractor.predict(pixels, verbose=0)
    np.testing.assert_allclose(embedded, features.predict(pixels, verbose=0), rtol=1e-6)
    np.testing.assert_allclose(outputs, run.model.predict(pixels, verbose=0), rtol=1e-6)
    # The sample is seeded: the same seed draws the same examples, another seed others.
    data = images.load(str(pet_run[1] / "pets"), image_size=(16, 16), validation_split=0.5)
    first, again, other = (compute_reference(run.model, data, samples=10, seed=seed)
                           for seed in (0, 0, 1))
    assert len(first.train) == len(first.held_out) == 10
    np.testing.assert_array_equal(first.train, again.train)
    assert not np.array_equal(first.train, other.train)
    assert all(any(np.allclose(row, known) for known in reference.train) for row in first.train)


def test_fresh_photos_are_not_flagged_and_shifted_ones_are(pet_run):
    run_dir, root = pet_run
    run = inference.load(run_dir)
    for seed in (1, 2, 3):
        found = drift(run, pet_photos(root / f"fresh{seed}", seed))
        assert not found.drifted, (seed, found.distance, found.threshold)
        assert found.distance < 0.5 * found.threshold and found.p_value > 0.1
        assert found.largest_share_shift == 0.0
    for name, shift in SHIFTS.items():
        found = drift(run, pet_photos(root / name, 4, **shift))
        assert found.drifted, (name, found.distance, found.threshold)
        assert found.distance > 1.4 * found.threshold and found.p_value < 0.01, name
    # Noise is not a photo of either class: the predictions move too.
    assert [share.label for share in found.shares] == ["cat", "dog"]
    assert found.largest_share_shift == 0.5 > found.share_threshold


def test_each_check_writes_a_new_report(pet_run):
    run_dir, root = pet_run
    folder = pet_photos(root / "week", seed=5)
    (folder / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    first, second = drift(run_dir, folder), drift(run_dir, [folder / "cat", folder / "dog"])
    assert first.skipped == [str(folder / "dog" / "broken.jpg")]
    assert (first.samples, first.inputs) == (2 * PER_CLASS, 2 * PER_CLASS + 1)
    assert first.report_file != second.report_file
    assert first.report_file.parent.parent == run_dir / "drift"
    assert first.folder.name.startswith("week-")
    report = json.loads(first.report_file.read_text())
    assert report["verdict"] == "no drift" and report["drifted"] is False
    assert report["distance"] == first.distance and report["threshold"] == first.threshold
    assert report["samples"] == 2 * PER_CLASS and report["data"] == [str(folder.resolve())]
    assert report["reference"]["source"] == FROM_RUN
    assert report["reference"]["train_samples"] == 40
    assert report["method"]["bootstrap_size"] == 2 * PER_CLASS
    assert [row["label"] for row in report["shares"]] == ["cat", "dog"]
    assert report["skipped"] == first.skipped and report["inputs"] == 2 * PER_CLASS + 1
    # The same inputs, the same seeds: the same figures.
    assert (second.distance, second.threshold) == (first.distance, first.threshold)
    # Beyond max_inputs, a seeded subset is embedded; resamples match its size.
    subset = drift(run_dir, folder, max_inputs=20)
    assert subset.samples + len(subset.skipped) == 20 and subset.inputs == 2 * PER_CLASS + 1
    assert subset.bootstrap_size == subset.samples
    assert not subset.drifted and subset.threshold > first.threshold


def test_a_run_without_a_reference_computes_it_from_its_recipe(image_run, tmp_path):
    # Every run stores its reference at the end; one from an older kft has none.
    assert (image_run[0] / REFERENCE_FILE).is_file()
    run_dir = shutil.copytree(image_run[0], tmp_path / image_run[0].name)
    (run_dir / REFERENCE_FILE).unlink()
    (run_dir / SUMMARY_FILE).unlink(missing_ok=True)
    fresh = drift(run_dir, pet_photos(tmp_path / "fresh", seed=1, per_class=12))
    assert fresh.reference_source == FROM_RECIPE and not fresh.drifted
    assert fresh.reference_file == run_dir / REFERENCE_FILE and fresh.reference_file.is_file()
    # 24 photos, a fifth held out by the recipe's split.
    assert (len(fresh.reference.train), len(fresh.reference.held_out)) == (20, 4)
    noise = drift(run_dir, pet_photos(tmp_path / "noise", 4, per_class=12, **SHIFTS["noise"]))
    assert noise.reference_source == FROM_RUN and noise.drifted


@pytest.mark.parametrize("inputs, message", [
    (["@notes.txt"], r"notes.txt is not an image \(.jpg.*this run classifies images"),
    (["/no/such/photos"], r"/no/such/photos does not exist: an image run takes image files"),
    (["@empty"], r"Folder .*empty holds no images"),
    ([], r"Nothing to compare: pass image files or folders"),
])
def test_bad_inputs_are_one_clear_error_and_write_nothing(pet_run, tmp_path, inputs, message):
    run_dir, _ = pet_run
    (tmp_path / "notes.txt").write_text("a sentence\n")
    (tmp_path / "empty").mkdir()
    before = sorted((run_dir / "drift").glob("*")) if (run_dir / "drift").exists() else []
    inputs = [str(tmp_path / item[1:]) if item.startswith("@") else item for item in inputs]
    with pytest.raises(KftError, match=message):
        drift(run_dir, inputs)
    after = sorted((run_dir / "drift").glob("*")) if (run_dir / "drift").exists() else []
    assert after == before


@pytest.mark.parametrize("options, message", [
    (dict(quantile=0.3), r"quantile must be in \(0.5, 1\]"),
    (dict(projections=0), "projections must be a whole number >= 1"),
    (dict(bootstrap=2.5), "bootstrap must be a whole number >= 1"),
])
def test_bad_options_are_one_clear_error(options, message):
    with pytest.raises(KftError, match=message):
        drift("/not/loaded", "photos/", **options)


def test_a_token_run_is_refused(token_run, tmp_path):
    (tmp_path / "sentences.txt").write_text("alice lives in paris .\n")
    with pytest.raises(KftError, match="compares a classifier's embeddings; .* is a "
                                       "token-tagging run"):
        drift(token_run, tmp_path / "sentences.txt")


def test_token_data_and_too_few_examples_get_no_reference(pet_run, tmp_path):
    class Tagging:
        task = "token_classification"

    class CausalLM:
        task = "causal_lm"

    assert store_reference(None, Tagging(), tmp_path) is None
    assert store_reference(None, CausalLM(), tmp_path) is None
    model = inference.load(pet_run[0]).model
    one = images.from_arrays(np.zeros((3, 16, 16, 3), "uint8"), np.array([0, 1, 1]),
                             validation_split=0.0)
    assert store_reference(model, one, tmp_path) is None
    assert not list(tmp_path.iterdir())
    with pytest.raises(KftError, match="fewer than 4 examples: too few for a drift reference"):
        compute_reference(model, one)


# ------------------------------------------------------------------------ text

ENGLISH = {
    "pos": ["good", "great", "excellent", "fine"],
    "neg": ["bad", "awful", "terrible", "boring"],
    "neutral": ["not very bad", "not really good", "fine but boring"],
}
NOUNS = ["movie", "film", "food", "service", "phone"]
FRENCH = ["le film était vraiment très mauvais", "la nourriture est excellente",
          "le service était lent mais aimable", "ce téléphone marche très bien",
          "nous avons adoré cette soirée", "je ne reviendrai jamais ici",
          "quelle belle journée à la plage", "les acteurs jouent avec beaucoup de talent"]


def english_reviews(count, seed):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for index in range(count):
        label = ("pos", "neg", "neutral")[index % 3]
        words = rng.choice(ENGLISH[label])
        noun = rng.choice(NOUNS)
        texts.append(rng.choice([f"the {noun} was {words}", f"this {noun} is really {words}",
                                 f"a {words} {noun} !", f"it was {words} , the {noun}"]))
        labels.append(label)
    return texts, labels


def test_other_languages_are_flagged_on_a_text_run(text_run, tmp_path):
    run_dir = shutil.copytree(text_run, tmp_path / "run")
    run = inference.load(run_dir)
    data = text_data.from_lists(*english_reviews(120, seed=0), validation_split=0.5,
                                batch_size=16)
    store_reference(run.model, data, run_dir)
    reference = DriftReference.load(run_dir)
    assert (len(reference.train), len(reference.held_out), reference.dim) == (60, 60, 16)
    assert reference.layer == "logits" and reference.labels == ["neg", "neutral", "pos"]

    english = tmp_path / "english.txt"
    english.write_text("\n".join(english_reviews(48, seed=1)[0]) + "\n")
    fresh = drift(run, english)
    assert not fresh.drifted and fresh.samples == 48, (fresh.distance, fresh.threshold)
    rng = np.random.default_rng(0)
    french = tmp_path / "french.csv"
    french.write_text("id,review\n" + "".join(
        f'{i},"{sentence}"\n' for i, sentence in enumerate(rng.choice(FRENCH, 48))))
    shifted = drift(run, french, column="review")
    assert shifted.drifted and shifted.distance > 1.4 * shifted.threshold, (
        shifted.distance, shifted.threshold)
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    with pytest.raises(KftError, match="photo.jpg is an image: this run classifies text"):
        drift(run, tmp_path / "photo.jpg")


# ------------------------------------------------------------------------- CLI


def test_the_command_exits_0_without_drift_1_with_it_2_on_bad_input(
        pet_run, tmp_path, monkeypatch, capsys):
    run_dir, _ = pet_run
    status, out, err = entry_point(monkeypatch, capsys, "drift", run_dir, "--data",
                                   pet_photos(tmp_path / "fresh", seed=6))
    assert status == 0, err
    assert "Verdict: NO DRIFT (distance" in out and "Threshold (q0.99 of 500" in out
    assert "Report: " + str(run_dir / "drift") in out
    status, out, err = entry_point(monkeypatch, capsys, "drift", run_dir, "--data",
                                   pet_photos(tmp_path / "bright", 4, **SHIFTS["brighter"]),
                                   "--quantile", "0.95")
    assert status == 1, err
    assert "Verdict: DRIFT (distance" in out and "Threshold (q0.95 of 500" in out
    (tmp_path / "notes.txt").write_text("hello\n")
    status, out, err = entry_point(monkeypatch, capsys, "drift", run_dir,
                                   "--data", tmp_path / "notes.txt")
    assert status == 2 and not out
    assert [line for line in err.splitlines() if line.strip()] == [
        (f"Error: {tmp_path / 'notes.txt'} is not an image (.jpg, .jpeg, .png, .bmp, .gif): "
         "this run classifies images; pass image files or folders.")]

