import os

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

    with pytest.raises(OSError):
        run.publish(run.path / "state.json", failing)
    assert run.read_json("state.json") == {"epoch": 1}


def test_resume_needs_a_run_directory(tmp_path):
    with pytest.raises(KftError, match="not a kft run directory"):
        RunDirectory.existing(tmp_path)
