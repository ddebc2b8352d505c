"""A run directory: where one run's results live, written so nothing is lost.

Layout:
```
runs/<recipe>-<YYYYmmdd-HHMMSS>/
  params.json        resolved hyperparameters
  labels.json        class names, in output order
  state.json         progress: stages and epochs done, best score (for --resume)
  history.csv        one row per epoch, all stages, with a `stage` column
  tensorboard/       TensorBoard logs
  checkpoints/       last.keras (every epoch) and best.keras (best validation)
  model.keras        the final model
  metrics.json       final and best validation metrics, per-stage summary
  curves.png         loss and accuracy per epoch, stage boundaries marked
```
"""

import datetime
import json
import os
import pathlib

from kft.errors import KftError


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
        run = cls(path)
        if not (run.path / "state.json").is_file():
            raise KftError(
                f"{path} is not a kft run directory with progress to resume "
                "(no state.json): pass the folder `kft run` printed."
            )
        return run

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
            json.dumps(value, indent=2, default=repr) + "\n"))

    def read_json(self, name):
        return json.loads((self.path / name).read_text())

    def save_model(self, model, target):
        self.publish(target, lambda tmp: model.save(tmp))

    @staticmethod
    def publish(target, write):
        """Writes through `write(tmp_path)` and renames into place atomically."""
        target = pathlib.Path(target)
        tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
        write(tmp)
        os.replace(tmp, target)
