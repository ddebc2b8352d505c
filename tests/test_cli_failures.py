"""What a user sees when things go wrong, walked through the `kft` command.

Every case checks the exit status, that stderr holds one message line and no
traceback, and what the run directory holds afterwards: none at all when the
run failed before an epoch finished, otherwise consistent checkpoints a
`--resume` continues.

Most commands run in this process, through the console script's entry point
(`tests.helpers.cli.entry_point`, what `python -m kft` calls; `sys.stdout` and
`sys.stderr` captured): a fresh `python -m kft` spends about ten seconds
importing TensorFlow, and argument, data and recipe-file errors, `KFT_DEBUG`
(read when the error is reported), a NaN loss, resumes and exports behave the
same either way. A fresh process, as a user starts it, stays where the
behaviour needs one:

- one case of the failures-before-training table, the one that trains, so the
  real process path stays proven: the process's stderr (file descriptor 2, not
  only `sys.stderr`) holds the message line alone, with TensorFlow's C++
  start-up lines muted by kft (in this process TensorFlow started before kft,
  unmuted, so only the fresh process can show it);
- a full disk: a file-size limit, set by the recipe at an epoch or on the
  export's process;
- SIGTERM, which the run sends itself;
- runs started together, which race for their run directories.
"""

import csv
import json
import math
import pathlib
import resource
import shutil
import signal
import textwrap

import numpy as np
import pytest

from kft import saving
from tests.helpers.cli import TINY
from tests.helpers.cli import RECIPES
from tests.helpers.cli import TINY_TEXT
from tests.helpers.cli import entry_point
from tests.helpers.cli import kft
from tests.helpers.cli import run_dirs
from tests.helpers.cli import write_pet_images

# The tiny model's checkpoint is about 50 kB; history, state and TensorBoard
# files stay far below this.
FILE_LIMIT = 30_000


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Every input the cases need, written once."""
    root = tmp_path_factory.mktemp("inputs")
    write_pet_images(root / "pets")
    write_pet_images(root / "one_class", classes=("cat",))
    (root / "empty").mkdir()
    (root / "one_row.csv").write_text("text,label\ngreat phone,pos\n")
    (root / "two_rows.csv").write_text("text,label\ngreat phone,pos\nbroke at once,neg\n")
    (root / "pairs.jsonl").write_text("".join(
        f'{{"prompt": "question {index}", "response": "answer {index}"}}\n'
        for index in range(10)))
    (root / "broken.csv").write_text("text,label\ngood,pos\nbad,neg,extra\n")
    (root / "raises.py").write_text(textwrap.dedent("""\
        import kft

        def load_rows(p):
            raise ValueError("no labels here")

        recipe = kft.Recipe(name="raises", params={"data": ""}, data=load_rows,
                            model=lambda p, data: None,
                            stages=lambda p: [kft.Stage("all", epochs=1)])
        """))
    (root / "not_a_recipe.py").write_text("import kft\nrecipe = 3\n")
    return root


def _paths(inputs, args):
    return [str(inputs / arg[1:]) if arg.startswith("@") else arg for arg in args]


# (case, recipe, arguments, message): "@name" is a file in `inputs`.
FAILURES_BEFORE_TRAINING = [
    ("unknown param", TINY, ["--data", "@pets", "--set", "lrr=1"],
     "Unknown hyperparameter 'lrr'"),
    ("param of the wrong type", TINY, ["--data", "@pets", "--set", "head_epochs=many"],
     "--set head_epochs=many: expected a int"),
    ("negative epochs", TINY, ["--data", "@pets", "--set", "head_epochs=-1"],
     "Stage 'head': epochs must be a whole number >= 0, got -1."),
    ("zero learning rate", TINY, ["--data", "@pets", "--set", "finetune_lr=0"],
     "Stage 'finetune': lr must be a number > 0, got 0.0."),
    ("zero batch size", TINY, ["--data", "@pets", "--set", "batch_size=0"],
     "batch_size must be a positive integer, got 0."),
    ("missing data folder", TINY, ["--data", "/no/such/folder"], "/no/such/folder"),
    ("empty image folder", TINY, ["--data", "@empty"], "has no class subfolders"),
    ("one image class", TINY, ["--data", "@one_class"], "has only one class (cat)"),
    ("one text class", TINY_TEXT, ["--data", "@one_row.csv"],
     "one_row.csv: its 1 row(s) hold only 'pos'; a classifier needs at least two classes."),
    ("too few rows to split", TINY_TEXT, ["--data", "@two_rows.csv"],
     "test_split=0.25 of 2 rows holds out no row"),
    ("broken CSV line", TINY_TEXT, ["--data", "@broken.csv"],
     "broken.csv, line 3 has more cells than the header"),
    ("recipe data() raises", "@raises.py", [],
     "raises.py, line 4, in load_rows: the recipe's data() raised ValueError: no labels here"),
    ("missing recipe", "/no/recipe.py", [], "Recipe file /no/recipe.py does not exist."),
    ("file without a recipe", "@not_a_recipe.py", [], "must define `recipe = kft.Recipe"),
    ("--force without --resume", TINY, ["--data", "@pets", "--force"],
     "--force only applies to --resume."),
    ("infinite loss in the first epoch", TINY, ["--data", "@pets", "--set", "lr=1e38"],
     "the loss became inf in stage 'head', epoch 1, batch 2."),
]


def _one_error_line(stderr):
    """The single message line on `stderr` (checking there is nothing else)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("Error: ")
    return lines[0]


def _in_process(monkeypatch, capsys, cwd, *args):
    """`kft ARGS` in this process from folder `cwd`: `(exit status, stdout, stderr)`."""
    monkeypatch.chdir(cwd)
    return entry_point(monkeypatch, capsys, *args)


def test_suggest_refuses_a_causal_lm_recipe_in_one_line(inputs, tmp_path, monkeypatch, capsys):
    recipe = RECIPES / "tiny_causal_lm.py"
    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "suggest", recipe,
                                    "--data", str(inputs / "pairs.jsonl"))
    assert status == 2, stderr[-3000:]
    assert ("kft suggest measures image and text classifiers; recipe 'tiny_causal_lm' is "
            "not one.") in _one_error_line(stderr)


@pytest.mark.parametrize("recipe, args, message", [case[1:] for case in FAILURES_BEFORE_TRAINING],
                         ids=[case[0] for case in FAILURES_BEFORE_TRAINING])
def test_failures_before_training_are_one_line_and_leave_no_run_directory(
        inputs, tmp_path, monkeypatch, capsys, recipe, args, message):
    (recipe,) = _paths(inputs, [recipe])
    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", recipe,
                                    *_paths(inputs, args), "--output", "out")
    assert status == 2, stderr[-3000:]
    assert message in _one_error_line(stderr)
    assert run_dirs(tmp_path / "out") == []


# The table's case run as a user's process: the one that trains, so TensorFlow
# both starts and runs before the message.
(FRESH_PROCESS_CASE,) = [case for case in FAILURES_BEFORE_TRAINING
                         if case[0] == "infinite loss in the first epoch"]


def test_a_failure_before_training_in_a_fresh_process_is_one_line_too(inputs, tmp_path):
    _, recipe, args, message = FRESH_PROCESS_CASE
    (recipe,) = _paths(inputs, [recipe])
    result = kft("run", recipe, *_paths(inputs, args), "--output", "out", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert message in _one_error_line(result.stderr)
    assert run_dirs(tmp_path / "out") == []


def test_kft_debug_shows_the_traceback_behind_the_line(inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KFT_DEBUG", "1")
    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", inputs / "raises.py")
    assert status == 2
    assert "Traceback" in stderr and 'raise ValueError("no labels here")' in stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: ")


def _strict_json(path):
    """Parses like a strict parser: NaN and Infinity are not JSON."""
    def reject(constant):
        raise ValueError(f"{path} holds {constant}")
    return json.loads(pathlib.Path(path).read_text(), parse_constant=reject)


def _finite_weights(path):
    model = saving.load_model(path)
    return all(np.isfinite(weight).all() for weight in model.get_weights())


def _history_epochs(run_dir):
    with open(run_dir / "history.csv") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _hidden_files(run_dir):
    return sorted(path.name for path in run_dir.rglob(".*"))


def test_nan_loss_stops_the_run_and_keeps_the_last_finite_epoch(inputs, tmp_path, monkeypatch,
                                                               capsys):
    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", TINY, "--data",
                                    inputs / "pets", "--set", "finetune_lr=1e30", "--output",
                                    "out")
    assert status == 2
    message = _one_error_line(stderr)
    assert "the loss became nan in stage 'finetune', epoch 3, batch " in message
    assert "keep epoch 2, the last finite weights" in message
    (run_dir,) = run_dirs(tmp_path / "out")
    state = _strict_json(run_dir / "state.json")
    assert state["status"] == "failed" and state["epoch"] == 2
    assert state["error_type"] == "TrainingDiverged"
    assert _finite_weights(run_dir / "checkpoints" / "last.keras")
    assert _finite_weights(run_dir / "checkpoints" / "best.keras")
    assert not (run_dir / "model.keras").exists() and not (run_dir / "metrics.json").exists()
    for path in run_dir.glob("*.json"):
        _strict_json(path)
    assert _history_epochs(run_dir) == [0, 1]


def _limit_file_size(limit):
    def limit_in_child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return limit_in_child


def test_a_full_disk_fails_one_checkpoint_cleanly_then_resume_and_export(inputs, tmp_path,
                                                                        monkeypatch, capsys):
    full = kft("run", TINY, "--data", inputs / "pets", "--output", "out", cwd=tmp_path,
               env={"KFT_TEST_FILE_LIMIT_AT_EPOCH": f"2:{FILE_LIMIT}"})
    assert full.returncode == 2
    message = _one_error_line(full.stderr)
    (run_dir,) = run_dirs(tmp_path / "out")
    last = run_dir / "checkpoints" / "last.keras"
    printed = run_dir.relative_to(tmp_path)  # as the user named it: --output out
    assert f"Could not write {printed}/checkpoints/last.keras: File too large" in message
    assert f"--resume {printed}`" in message
    assert _hidden_files(run_dir) == []
    state = _strict_json(run_dir / "state.json")
    assert state["status"] == "failed" and state["epoch"] == 2
    assert _finite_weights(last)

    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", TINY, "--resume",
                                    run_dir)
    assert status == 0, stderr[-3000:]
    assert _history_epochs(run_dir) == [0, 1, 2, 3]
    assert _strict_json(run_dir / "state.json")["status"] == "finished"

    status, stdout, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", TINY, "--resume",
                                         run_dir)
    assert status == 0, stderr[-3000:]
    assert f"{run_dir} is finished: nothing to resume" in stdout
    assert "Epoch" not in stdout and _history_epochs(run_dir) == [0, 1, 2, 3]

    failed_export = kft("export", run_dir, "--to", "serving", cwd=tmp_path,
                        preexec_fn=_limit_file_size(FILE_LIMIT))
    assert failed_export.returncode == 2
    message = _one_error_line(failed_export.stderr)
    assert "Could not write the export to serving/tiny: File too large; nothing was " \
           "published (the next export takes version 1)." in message
    assert list((tmp_path / "serving" / "tiny").iterdir()) == []
    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "export", run_dir, "--to",
                                    "serving")
    assert status == 0, stderr[-3000:]
    assert (tmp_path / "serving" / "tiny" / "1" / "saved_model.pb").is_file()


def test_sigterm_stops_like_ctrl_c_and_a_changed_recipe_needs_force(inputs, tmp_path,
                                                                    monkeypatch, capsys):
    recipe = tmp_path / "tiny.py"
    shutil.copyfile(TINY, recipe)
    stopped = kft("run", recipe, "--data", inputs / "pets", "--output", "out", cwd=tmp_path,
                  env={"KFT_TEST_TERM_AT_EPOCH": "3"})
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "Terminated (SIGTERM)." in stopped.stderr
    (run_dir,) = run_dirs(tmp_path / "out")
    printed = run_dir.relative_to(tmp_path)
    assert f"keeps epoch 3; continue with `kft run RECIPE --resume {printed}`" in stopped.stderr
    state = _strict_json(run_dir / "state.json")
    assert state["status"] == "interrupted" and state["epoch"] == 3
    assert _history_epochs(run_dir) == [0, 1, 2] and _hidden_files(run_dir) == []
    assert _finite_weights(run_dir / "checkpoints" / "last.keras")

    recipe.write_text(recipe.read_text() + "\n# edited after the run started\n")
    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", recipe, "--resume",
                                    run_dir)
    assert status == 2
    assert f"{recipe} changed since {run_dir} started" in _one_error_line(stderr)
    assert _strict_json(run_dir / "state.json") == state

    status, _, stderr = _in_process(monkeypatch, capsys, tmp_path, "run", recipe, "--resume",
                                    run_dir, "--force")
    assert status == 0, stderr[-3000:]
    assert _history_epochs(run_dir) == [0, 1, 2, 3]
    assert _strict_json(run_dir / "state.json")["status"] == "finished"


def test_runs_started_together_get_a_directory_each(inputs, tmp_path):
    started = [kft("run", TINY, "--data", inputs / "pets", "--set", "head_epochs=1",
                   "--set", "finetune_epochs=0", "--output", "out", cwd=tmp_path,
                   background=True) for _ in range(2)]
    for process in started:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
    made = run_dirs(tmp_path / "out")
    assert len(made) == 2
    for run_dir in made:
        assert _strict_json(run_dir / "state.json")["status"] == "finished"
        assert math.isfinite(_strict_json(run_dir / "metrics.json")["final"]["val_loss"])
