"""A kft run in MLflow: params, per-epoch metrics, final metrics, plots and model.

Metrics keep their Keras names (`loss`, `val_accuracy`, `learning_rate`) at
step = the global epoch (history.csv's `epoch`, from 0), so each is one
curve over all stages and runs with other stage plans still compare; a
`stage` metric (1, 2, ...) marks which stage each epoch belongs to, and the
tag `kft.stages` names them. Final results are `final/<name>` and
`best/<monitor>` (MLflow's charts group metrics by the part before `/`).

Every MLflow call goes through `MlflowTracker._call`: the first failure (a
server down, a network error, a broken store) warns once and switches
tracking off for the rest of the process, so training never waits on it.
"""

import contextlib
import logging
import os
import pathlib
import time

import keras

from kft.errors import KftError
from kft.tracking.base import TRACKING_FILE

ARTIFACTS = ("model.keras", "labels.json", "metrics.json", "curves.png", "confusion_matrix.png")
_STATUS = {"finished": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
# MLflow retries a failed request 7 times with exponential backoff (minutes
# per call on a dead server): a run should lose seconds. Variables the user
# set win. MLflow also prints run URLs to stdout; kft says where the run is.
_ENVIRONMENT = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def default_uri(folder="mlruns"):
    """The embedded store: SQLite in `folder/mlflow.db`, artifacts in `folder/`.

    MLflow 3.17 refuses its file store (`./mlruns` as a tracking URI) unless
    `MLFLOW_ALLOW_FILE_STORE=true`; SQLite is its supported local store, and
    its artifacts default to `./mlruns` too, so one folder holds the run.

    Args:
        folder: the folder, made if missing (relative to the working directory).

    Returns:
        A `sqlite:///` URI with an absolute path, so a resume from elsewhere
        finds the same store.
    """
    path = pathlib.Path(folder).absolute()
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'mlflow.db'}"


class MlflowTracker:
    """Logs one kft run to one MLflow run (kept across `--resume`).

    Args:
        uri: the tracking URI; default: a resumed run's `tracking.json`, then
            `MLFLOW_TRACKING_URI`, then `default_uri()`.
        experiment: the experiment name; default `MLFLOW_EXPERIMENT_NAME`,
            then the recipe's name.
        out: the `kft.console.Console` for where the run is and the one warning.

    Example:
    ```python
    tracker = MlflowTracker(uri="http://127.0.0.1:5000")
    tracker.start(run_dir, recipe, params, stages)
    ```
    """

    def __init__(self, uri=None, experiment=None, out=None):
        try:
            import mlflow  # noqa: F401  (lazily: tracking is an optional extra)
        except ImportError:
            raise KftError("--track mlflow needs MLflow: pip install 'kft[tracking]' "
                           "(or pip install mlflow).") from None
        self.uri = uri
        self.experiment = experiment
        self.out = out
        self.client = None
        self.run_id = None
        self.failed = False
        self._stage_of_epoch = []

    # ------------------------------------------------------------- the run

    def start(self, run_dir, recipe, params, stages):
        """Creates the MLflow run (or reopens the one in `tracking.json`).

        A resumed run first logs the epochs of `history.csv` that MLflow lacks
        (those of a time tracking was down), so its history stays complete.
        """
        for number, stage in enumerate(stages, start=1):
            self._stage_of_epoch += [number] * stage.epochs
        self._call(self._open, run_dir, recipe, params, stages)
        if self.active:
            self._call(self._log_missing_epochs, run_dir)

    def callbacks(self):
        """The callback that logs each epoch (put it after the checkpoint)."""
        return [EpochLogger(self)]

    @property
    def active(self):
        """Whether a run is open and tracking has not failed."""
        return self.run_id is not None and not self.failed

    def log_epoch(self, epoch, logs):
        """Logs one epoch's Keras logs at step `epoch`, with its stage number."""
        if not self.active:
            return
        values = {key: float(value) for key, value in logs.items()}
        if epoch < len(self._stage_of_epoch):
            values["stage"] = self._stage_of_epoch[epoch]
        self._call(self._log_metrics, values, epoch)

    def finish(self, run_dir, metrics):
        """Logs `final/...`, `best/...`, the artifacts; closes the run FINISHED."""
        if not self.active:
            return
        values = {f"final/{key}": value for key, value in metrics.get("final", {}).items()}
        values.update({f"best/{key}": value for key, value in metrics.get("best", {}).items()
                       if value is not None})
        self._call(self._log_metrics, values, len(self._stage_of_epoch))
        for name in ARTIFACTS:
            if (run_dir.path / name).is_file():
                self._call(self.client.log_artifact, self.run_id, str(run_dir.path / name))
        self._close("finished")

    def end(self, status, error=None):
        """Closes the run FAILED (`"failed"`) or KILLED (`"interrupted"`)."""
        if not self.active:
            return
        if error is not None and not isinstance(error, KeyboardInterrupt):
            self._call(self.client.set_tag, self.run_id, "kft.error", str(error)[:1000])
        self._close(status)

    # ----------------------------------------------------------- internals

    def _call(self, function, *args):
        """Calls MLflow; the first failure warns once and stops tracking."""
        if self.failed:
            return None
        try:
            with _environment(_ENVIRONMENT):
                return function(*args)
        except Exception as error:  # noqa: BLE001  (any tracking failure: keep training)
            self.failed = True
            if self.out is not None:
                self.out.tracking_failed(self.uri, error)
            return None

    def _open(self, run_dir, recipe, params, stages):
        from mlflow.tracking import MlflowClient

        saved = run_dir.read_json(TRACKING_FILE) if (run_dir.path / TRACKING_FILE).is_file() else {}
        run_id = saved.get("run_id")
        # The saved URI before the environment's: the run id only exists there.
        self.uri = (self.uri or saved.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
                    or default_uri())

        # A new SQLite store logs its table creation at INFO, between kft's lines.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = (self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                      or recipe.name)
        # A resumed run stays in the experiment it started in.
        experiment = saved.get("experiment", experiment)
        resumed = run_id is not None
        if resumed:
            self.client.update_run(run_id, status="RUNNING")
        else:
            run_id = self.client.create_run(self._experiment_id(experiment),
                                            run_name=run_dir.path.name).info.run_id
            run_dir.write_json(TRACKING_FILE, {"tracker": "mlflow", "tracking_uri": self.uri,
                                               "experiment": experiment, "run_id": run_id})
        self.run_id = run_id
        from mlflow.entities import Param, RunTag

        # Identical params may be logged again (a resume); MLflow refuses changed ones.
        tags = _tags(run_dir, recipe, stages)
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in vars(params).items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])
        if self.out is not None:
            self.out.tracking_started(self.uri, experiment, run_id, resumed)

    def _experiment_id(self, name):
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name)
        except MlflowException:
            # Another run (a parallel tuning trial) created it meanwhile.
            return self.client.get_experiment_by_name(name).experiment_id

    def _log_metrics(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def _log_missing_epochs(self, run_dir):
        from kft.runs.history import read_history

        if not run_dir.history.is_file():
            return
        logged = {m.step for m in self.client.get_metric_history(self.run_id, "stage")}
        for row in read_history(run_dir.history):
            epoch = int(row["epoch"])
            if epoch not in logged:
                logs = {k: v for k, v in row.items() if k not in ("epoch", "stage")
                        and v is not None}
                self.log_epoch(epoch, logs)

    def _close(self, status):
        self._call(self.client.set_tag, self.run_id, "kft.status", status)
        self._call(self.client.set_terminated, self.run_id, _STATUS.get(status, "FAILED"))


class EpochLogger(keras.callbacks.Callback):
    """Sends each epoch's logs to an `MlflowTracker` (step = the global epoch).

    Args:
        tracker: the `MlflowTracker`.
    """

    def __init__(self, tracker):
        super().__init__()
        self.tracker = tracker

    def on_epoch_end(self, epoch, logs=None):
        self.tracker.log_epoch(epoch, logs or {})


def _tags(run_dir, recipe, stages):
    """What finds the run again: recipe, run directory, kft version, status, stages."""
    from kft import __version__

    tags = {
        "kft.recipe": recipe.name,
        "kft.run_dir": str(run_dir.path.absolute()),
        "kft.version": __version__,
        "kft.status": "running",
        "kft.stages": _stage_table(stages),
        "mlflow.source.type": "LOCAL",
    }
    if recipe.source:
        tags["mlflow.source.name"] = str(pathlib.Path(recipe.source).absolute())
    return tags


def _stage_table(stages):
    """`1 head: steps 0-1; 2 finetune: steps 2-3` (steps are global epochs)."""
    parts, first = [], 0
    for number, stage in enumerate(stages, start=1):
        span = f"steps {first}-{first + stage.epochs - 1}" if stage.epochs else "no epochs"
        parts.append(f"{number} {stage.name}: {span}")
        first += stage.epochs
    return "; ".join(parts)


@contextlib.contextmanager
def _environment(defaults):
    """Sets the variables of `defaults` that are unset, for the duration."""
    added = [name for name in defaults if name not in os.environ]
    os.environ.update({name: defaults[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)
