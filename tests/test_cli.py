"""End-to-end tests of the `kft` command.

A run killed with SIGKILL runs as a user's `python -m kft` process: the kill
ends the process. Every other command runs in this process, through the
console script's entry point (`tests.helpers.cli.entry_point`, what
`python -m kft` calls), which parses, runs and reports as the process does
without its ten seconds of TensorFlow import; the resume after the kill reads
only what the killed process left on disk. tests/test_cli_failures.py keeps a
fresh process for the one-line error path.
"""

import csv
import json
import re

import pytest

from tests.helpers.cli import TINY
from tests.helpers.cli import entry_point
from tests.helpers.cli import kft
from tests.helpers.cli import run_dirs
from tests.helpers.cli import write_pet_images
from tests.helpers.process import REPO


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two classes of small photos-to-be, plus a corrupt and a truncated file."""
    root = write_pet_images(tmp_path_factory.mktemp("pets") / "pets")
    (root / "cat" / "corrupt.jpg").write_bytes(b"this is not a jpeg")
    truncated = (root / "dog" / "1.png").read_bytes()[:40]
    (root / "dog" / "truncated.png").write_bytes(truncated)
    return root


@pytest.fixture
def kft_here(tmp_path, monkeypatch, capsys):
    """`kft ARGS` in this process from tmp_path: `(exit status, stdout, stderr)`."""
    monkeypatch.chdir(tmp_path)
    return lambda *args: entry_point(monkeypatch, capsys, *args)


def _history(run_dir):
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def _run_dir(output):
    (run_dir,) = run_dirs(output)
    return run_dir


@pytest.mark.slow
def test_cats_dogs_recipe_runs_on_a_folder_with_a_corrupt_file(image_folder, tmp_path, kft_here):
    status, stdout, stderr = kft_here(
        "run", str(REPO / "recipes" / "cats_dogs.py"), "--data", str(image_folder),
        # MobileNetV3-Small: the recipe's ResNet50 spent a minute building graphs and
        # writing 94 MB checkpoints (tests/models/test_vision.py builds ResNet50).
        "--set", "backbone=mobilenetv3small",
        "--set", "weights=none", "--set", "image_size=64", "--set", "head_epochs=1",
        "--set", "finetune_epochs=1", "--set", "batch_size=8", "--output", "out",
    )
    assert status == 0, stderr[-3000:]
    assert "Skipped 2 unreadable file(s)" in stdout
    assert "Stage 1/2: head" in stdout and "Stage 2/2: finetune" in stdout
    assert "Summary" in stdout
    run_dir = _run_dir(tmp_path / "out")
    for name in ("params.json", "labels.json", "history.csv", "model.keras", "metrics.json",
                 "curves.png", "checkpoints/last.keras", "checkpoints/best.keras"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((run_dir / "params.json").read_text())["image_size"] == 64
    assert json.loads((run_dir / "labels.json").read_text()) == ["cat", "dog"]
    assert [row["stage"] for row in _history(run_dir)] == ["head", "finetune"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["final"]["val_accuracy"] <= 1.0


def test_a_run_resumes_after_sigkill(image_folder, tmp_path, kft_here):
    killed = kft("run", TINY, "--data", str(image_folder), "--output", "out", cwd=tmp_path,
                 env={"KFT_TEST_KILL_AT_EPOCH": "3"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    run_dir = _run_dir(tmp_path / "out")
    state = json.loads((run_dir / "state.json").read_text())
    assert state["epoch"] == 3 and state["stage"] == "finetune"

    status, stdout, stderr = kft_here("run", TINY, "--resume", str(run_dir))
    assert status == 0, stderr[-3000:]
    assert "Resuming" in stdout and "Stage 1/2" not in stdout
    rows = _history(run_dir)
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    assert [row["stage"] for row in rows] == ["head", "head", "finetune", "finetune"]
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 4
    assert (run_dir / "model.keras").is_file()

    # The finished run predicts and scores new data.
    status, stdout, stderr = kft_here("predict", run_dir, image_folder / "dog", "--top", "2",
                                      "--output", "dogs.csv")
    assert status == 0, stderr[-3000:]
    assert "Skipped 1 unreadable file(s)" in stdout
    with open(tmp_path / "dogs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {row["label"] for row in rows} <= {"cat", "dog"}
    assert all(row["input"] in stdout for row in rows)
    status, stdout, stderr = kft_here("evaluate", run_dir, "--data", image_folder)
    assert status == 0, stderr[-3000:]
    assert "Recipe metrics: accuracy" in stdout and "24 examples" in stdout
    (evaluated,) = (run_dir / "evaluations").iterdir()
    assert json.loads((evaluated / "metrics.json").read_text())["skipped"]
    (tmp_path / "notes.txt").write_text("a text\n")
    status, _, stderr = kft_here("predict", run_dir, "notes.txt")
    assert status == 2 and "this run classifies images" in stderr
    assert "Traceback" not in stderr


def test_help_and_info_list_the_recipe_hyperparameters(kft_here):
    for args in (["run", TINY, "--help"], ["info", TINY, "--params-only"]):
        status, stdout, stderr = kft_here(*args)
        assert status == 0, stderr
        assert re.search(r"head_epochs +2 +\(int\)", stdout)
        assert re.search(r"finetune_lr +0\.01 +\(float\)", stdout)
        assert re.search(r"strategy +'auto' +\(str\) +run param", stdout)
        assert re.search(r"accumulate +1 +\(int\) +run param", stdout)
    status, stdout, _ = kft_here("run", "--help")
    assert status == 0
    assert "--strategy [auto|one_device|mirrored|multi_worker|tpu]" in stdout


def test_info_shows_groups_and_stage_plan(image_folder, kft_here):
    status, stdout, stderr = kft_here("info", TINY, "--data", str(image_folder))
    assert status == 0, stderr[-3000:]
    assert "Layer groups" in stdout
    assert "1. head" in stdout and "2. finetune" in stdout


def test_suggest_prints_the_group_table_and_writes_its_json(image_folder, tmp_path, kft_here):
    status, stdout, stderr = kft_here("suggest", TINY, "--data", str(image_folder), "--samples",
                                      "16", "--json", "suggest.json")
    assert status == 0, stderr[-3000:]
    found = json.loads((tmp_path / "suggest.json").read_text())
    names = [group["name"] for group in found["groups"]]
    assert names == ["group_1", "group_2"]  # the tiny model's backbone, split evenly
    for name in names:
        assert re.search(rf"^{name} +0\.\d{{3}} +\d\.\d\de[-+]\d\d +[\d,]+ +(train|frozen)$", stdout,
                         re.MULTILINE), stdout
    assert f"Stage(train=\"groups:{found['unfreeze'] + 1}\", layer_decay=" in stdout
    assert f"--set unfreeze={found['unfreeze']}" in stdout and found["samples"] == 16
    # Its own photos as the reference: near at every depth, so only the top trains.
    status, stdout, stderr = kft_here("suggest", TINY, "--data", str(image_folder),
                                      "--reference", str(image_folder), "--json", "near.json")
    assert status == 0, stderr[-3000:]
    near = json.loads((tmp_path / "near.json").read_text())
    assert max(group["distance"] for group in near["groups"]) < 0.1 and near["unfreeze"] == 1
    status, _, stderr = kft_here("suggest", TINY, "--data", str(image_folder),
                                 "--reference", str(tmp_path / "missing"))
    assert status == 2 and "missing does not exist" in stderr


def test_suggest_on_a_text_recipe_reads_a_reference_text_file(tiny_bert_dir, tmp_path, kft_here):
    from tests.helpers.cli import TINY_TEXT

    rows = [("the phone broke at once", "neg"), ("great sound and battery", "pos")] * 8
    (tmp_path / "reviews.csv").write_text(
        "text,label\n" + "".join(f"{text} {i},{label}\n" for i, (text, label) in enumerate(rows)))
    (tmp_path / "general.txt").write_text("the weather is fine today\nwe went to the market\n")
    status, stdout, stderr = kft_here("suggest", TINY_TEXT, "--data", "reviews.csv", "--set",
                                      f"model={tiny_bert_dir}", "--reference", "general.txt",
                                      "--json", "text.json")
    assert status == 0, stderr[-3000:]
    found = json.loads((tmp_path / "text.json").read_text())
    assert [g["name"] for g in found["groups"]] == [
        "embeddings", "transformer_layer_0", "transformer_layer_1", "pooler"]
    # The 8 training rows (16, less a quarter each for validation and test) against 2 lines.
    assert "(8 target and 2 reference examples)" in stdout
    status, _, stderr = kft_here("suggest", TINY_TEXT, "--data", "reviews.csv", "--set",
                                 f"model={tiny_bert_dir}", "--reference", "reviews.png")
    assert status == 2 and "reviews.png does not exist" in stderr


def test_lr_find_writes_a_plot_and_suggests_a_rate(image_folder, tmp_path, kft_here):
    status, stdout, stderr = kft_here("lr-find", TINY, "--data", str(image_folder), "--stage",
                                      "2", "--steps", "15", "--output", "out")
    assert status == 0, stderr[-3000:]
    assert "Suggested learning rate:" in stdout
    run_dir = _run_dir(tmp_path / "out")
    assert (run_dir / "lr_find.png").stat().st_size > 1000
    found = json.loads((run_dir / "lr_find.json").read_text())
    assert found["stage"] == "finetune" and 1e-7 <= found["suggestion"] <= 10.0
    status, _, stderr = kft_here("lr-find", TINY, "--data", str(image_folder), "--stage", "3")
    assert status == 2 and "--stage must be 1..2" in stderr
