import os

import numpy as np
import pytest

from kft.errors import KftError
from kft.runs.run_directory import RunDirectory


def test_runs_never_share_a_directory(tmp_path):
    first = RunDirectory.create("demo", tmp_path)
    second = RunDirectory.create("demo", tmp_path)
    assert first.path != second.path
    assert first.path.name.startswith("demo-") and second.path.name.startswith("demo-")
    assert first.checkpoints.is_dir()


def test_json_round_trip_and_atomic_publish(tmp_path):
    run = RunDirectory.create("demo", tmp_path)
    run.write_json("state.json", {"epoch": 3, "odd": {1, 2}})
    assert run.read_json("state.json")["epoch"] == 3
    assert not [name for name in os.listdir(run.path) if ".tmp" in name]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    run = RunDirectory.create("demo", tmp_path)
    run.write_json("state.json", {"epoch": 1})

    def failing(tmp):
        tmp.write_text("{half")
        raise OSError("disk full")

    with pytest.raises(KftError, match=r"Could not write .*state.json: disk full; the previous "
                                       r"state.json \(if any\) is intact"):
        run.publish(run.path / "state.json", failing)
    assert run.read_json("state.json") == {"epoch": 1}
    assert _hidden(run) == []


def test_json_files_are_strict_json(tmp_path):
    run = RunDirectory.create("demo", tmp_path)
    run.write_json("metrics.json", {"loss": float("nan"), "scores": [np.float32("inf"), 1.5],
                                    "count": np.int64(3)})
    text = (run.path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert run.read_json("metrics.json") == {"loss": None, "scores": [None, 1.5], "count": 3}


def test_discard_never_removes_a_directory_with_weights(tmp_path):
    empty, trained = RunDirectory.create("demo", tmp_path), RunDirectory.create("demo", tmp_path)
    trained.last_checkpoint.write_bytes(b"weights")
    assert empty.discard() and not empty.path.exists()
    assert not trained.discard() and trained.last_checkpoint.is_file()


def _hidden(run):
    return sorted(path.name for path in run.path.rglob(".*"))


_KILLED_WHILE_SAVING = """
import os, pathlib, signal, sys, zipfile
import numpy as np
from kft.runs.run_directory import RunDirectory
from tests.helpers.tiny_models import tiny_image_model

run, point = RunDirectory(sys.argv[1]), sys.argv[2]
model = tiny_image_model(2, 16)
model.set_weights([np.full_like(w, 2.0) for w in model.get_weights()])

def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

replace = os.replace
if point == "zip-not-closed":      # the temporary file is a truncated zip
    zipfile.ZipFile.close = kill
elif point == "before-rename":
    os.replace = kill
elif point == "after-rename":
    os.replace = lambda *args: (replace(*args), kill())
elif point == "json-half-written":
    pathlib.Path.write_text = lambda self, text: (open(self, "w").write(text[:9]), kill())
if point == "json-half-written":
    run.write_json("state.json", {"epoch": 2, "padding": "x" * 100})
else:
    run.save_model(model, run.last_checkpoint)
"""


def test_a_kill_at_any_point_of_a_save_leaves_the_old_or_the_new_file(tmp_path):
    from kft import saving
    from tests.helpers.process import kill_points
    from tests.helpers.tiny_models import tiny_image_model

    model = tiny_image_model(2, 16)
    model.set_weights([np.full_like(w, 1.0) for w in model.get_weights()])
    points = ["zip-not-closed", "before-rename", "after-rename", "json-half-written"]
    runs = []
    for point in points:
        run = RunDirectory(tmp_path / point)
        run.checkpoints.mkdir(parents=True)
        run.save_model(model, run.last_checkpoint)
        run.write_json("state.json", {"epoch": 1})
        runs.append(run)
    kill_points(_KILLED_WHILE_SAVING, [run.path for run in runs], points)

    for point, run in zip(points, runs):
        expected = 2.0 if point == "after-rename" else 1.0
        weights = saving.load_model(run.last_checkpoint).get_weights()
        assert all(np.all(w == expected) for w in weights), point
        assert run.read_json("state.json") == {"epoch": 1}, point
        # Resuming clears what the killed writer left.
        RunDirectory.existing(run.path)
        assert _hidden(run) == [], point


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(KftError, match="not a kft run directory"):
        RunDirectory.existing(tmp_path)
