"""A tune directory: where one hyperparameter search keeps its state and results.

Layout:
```
runs/<recipe>-tune-<YYYYmmdd-HHMMSS>/
  tune.json          how the search was started: tuner, objective, fixed params, space
  keras_tuner/       keras-tuner's project (oracle state, one trial.json per trial)
  trials/<id>/       trial <id>: its run directory (or directories, if resumed
                     after a crash before its first epoch) and record.json
  trials.csv         one row per trial: status, objective, seconds, values, run
  trials.png         the objective per trial and the best so far
  best_params.json   the best trial's params: `kft run RECIPE --params FILE`
```
`kft tune RECIPE --resume DIR` continues the search where it stopped.
"""

import pathlib

from kft.errors import KftError
from kft.internal import json_text
from kft.runs.run_directory import RunDirectory, new_directory


class TuneDirectory:
    """Paths and atomic writes for one search."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    @classmethod
    def create(cls, recipe_name, output=None):
        """Makes a new `<output>/<recipe_name>-tune-<time>` (default `runs/`)."""
        tune = cls(new_directory(f"{recipe_name}-tune", output))
        tune.trials.mkdir()
        return tune

    @classmethod
    def existing(cls, path):
        tune = cls(path)
        if not tune.config.is_file():
            raise KftError(
                f"{path} is not a kft tune directory (no tune.json): pass the folder "
                "`kft tune` printed."
            )
        return tune

    @property
    def config(self):
        return self.path / "tune.json"

    @property
    def trials(self):
        return self.path / "trials"

    @property
    def keras_tuner_project(self):
        return "keras_tuner"

    @property
    def trials_csv(self):
        return self.path / "trials.csv"

    @property
    def trials_png(self):
        return self.path / "trials.png"

    @property
    def best_params(self):
        return self.path / "best_params.json"

    def trial_folder(self, trial_id):
        return self.trials / str(trial_id)

    def write_json(self, target, value):
        RunDirectory.publish(target, lambda tmp: tmp.write_text(
            json_text.dumps(value)))
