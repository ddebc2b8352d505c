"""A run directory: where one run's results live, written so nothing is lost.

Layout:
```
runs/<recipe>-<YYYYmmdd-HHMMSS>/
  params.json        resolved hyperparameters
  labels.json        class names, in output order (classifiers and taggers)
  generation.json    causal LMs: the data's kind and how prompts are formatted
  state.json         progress: stages and epochs done, best score, status
                     (running, interrupted, failed, finished), recipe SHA-256
  history.csv        one row per epoch, all stages, with a `stage` column
  tensorboard/       TensorBoard logs
  checkpoints/       last.keras (every epoch) and best.keras (best validation)
  model.keras        the final model
  regularizers/      stage-N.npz: what a regularised stage compares against (its start),
                     for a resume in the middle of the stage
  baseline.json      the linear probe's scores, or a causal LM's before fine-tuning
  metrics.json       final and best validation metrics, per-stage summary
  samples.jsonl      causal LMs: held-out prompts, references, base and fine-tuned answers
  curves.png         loss and accuracy per epoch, stage boundaries marked
```
"""

import datetime
import json
import os
import pathlib
import shutil

from kft.errors import KftError
from kft.internal import json_text


def new_directory(name, output=None):
    """Makes and returns a new, never-used folder `<output>/<name>-<time>`.

    Args:
        name: the folder name's prefix, e.g. the recipe's name.
        output: the parent folder (default `runs/`), made if missing.
    """
    root = pathlib.Path(output or "runs")
    root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{name}-{stamp}"
    for attempt in range(1000):
        path = root / (base if attempt == 0 else f"{base}-{attempt + 1}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise KftError(f"Could not find a free directory name under {root}.")


def final_model_of(run_dir):
    """The `model.keras` of a finished run directory, or one clear error.

    Args:
        run_dir: the folder `kft run` printed.

    Returns:
        The model file's `pathlib.Path`.
    """
    model_file = pathlib.Path(run_dir) / "model.keras"
    if not model_file.is_file():
        raise KftError(
            f"{run_dir} holds no model.keras: pass a finished run directory (the folder "
            "`kft run` printed); finish an interrupted one with `kft run --resume`."
        )
    return model_file


class RunDirectory:
    """Paths and atomic writes for one run."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    @classmethod
    def create(cls, recipe_name, output=None):
        """Makes a new, never-used run directory under `output` (default `runs/`)."""
        run = cls(new_directory(recipe_name, output))
        run.checkpoints.mkdir()
        return run

    @classmethod
    def existing(cls, path):
        """An earlier run directory, cleared of temporary files a killed run left."""
        run = cls(path)
        if not (run.path / "state.json").is_file():
            raise KftError(
                f"{path} is not a kft run directory with progress to resume "
                "(no state.json): pass the folder `kft run` printed."
            )
        for folder in (run.path, run.checkpoints):
            for leftover in folder.glob(".*.tmp*"):
                # Never loaded (the rename never happened): an unfinished write.
                leftover.unlink(missing_ok=True)
        return run

    @property
    def finished(self):
        """Whether the run completed: its final model and metrics are written."""
        if not (self.path / "state.json").is_file():
            return False
        status = self.read_json("state.json").get("status")
        if status is not None:
            return status == "finished"
        # Written by a kft without a status: the final files tell.
        return self.final_model.is_file() and (self.path / "metrics.json").is_file()

    @property
    def checkpoints(self):
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self):
        return self.checkpoints / "last.keras"

    @property
    def best_checkpoint(self):
        return self.checkpoints / "best.keras"

    @property
    def history(self):
        return self.path / "history.csv"

    @property
    def final_model(self):
        return self.path / "model.keras"

    def write_json(self, name, value):
        self.publish(self.path / name, lambda tmp: tmp.write_text(
            json_text.dumps(value)))

    def write_text(self, name, text):
        self.publish(self.path / name, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def read_json(self, name):
        return json.loads((self.path / name).read_text())

    def save_model(self, model, target):
        self.publish(target, lambda tmp: model.save(tmp))

    def holds_checkpoint(self):
        """Whether any epoch's weights were saved here."""
        return any(self.checkpoints.glob("*.keras")) or self.final_model.is_file()

    def discard(self):
        """Removes a run directory that holds no checkpoint (a run that failed
        before its first epoch ended); one with weights is never removed.

        Returns:
            Whether the directory was removed.
        """
        if self.holds_checkpoint():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    @staticmethod
    def publish(target, write):
        """Writes through `write(tmp_path)` and renames into place atomically.

        The file is flushed to disk before the rename, so the target is
        always either the previous file or the complete new one, even after
        a kill -9 or a power cut. A failed write (a full disk) removes the
        temporary file and raises one `KftError` naming the target.
        """
        target = pathlib.Path(target)
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        try:
            write(tmp)
            _flush_to_disk(tmp)
            os.replace(tmp, target)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise KftError(
                    f"Could not write {target}: {error.strerror or error}; "
                    f"the previous {target.name} (if any) is intact."
                ) from error
            raise


def _flush_to_disk(path):
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())
