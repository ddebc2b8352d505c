"""Callbacks that record a run: checkpoints with progress state, history,
and the stop at the first non-finite loss."""

import csv
import math
import os

import keras

from kft.errors import TrainingDiverged
from kft.internal.signals import deferred_interrupts

# Keras' base of ModelCheckpoint and EarlyStopping (not exported by `keras.callbacks`).
from keras.src.callbacks.monitor_callback import MonitorCallback


class RunCheckpoint(MonitorCallback):
    """Saves `last.keras` every epoch, `best.keras` on improvement, and progress.

    The checkpoint is published before `state.json` says the epoch is done,
    so a run killed at any moment resumes from a consistent epoch. The best
    score lives in the state too, so a resumed run does not forget it.

    Args:
        run_dir: the `RunDirectory`.
        state: the run's progress dict (`epoch`, `best`), updated in place.
        stage_name: name of the stage being trained.
        monitor: the validation metric that defines "best".
        mode: `"min"`, `"max"` (a run passes
            `kft.runs.monitor.monitor_mode`'s answer) or `"auto"` (Keras'
            rule on the compiled metrics).
    """

    def __init__(self, run_dir, state, stage_name, monitor="val_accuracy", mode="auto"):
        super().__init__(monitor=monitor, mode=mode)
        self.run_dir = run_dir
        self.state = state
        self.stage_name = stage_name
        self.model_to_save = None

    def on_epoch_end(self, epoch, logs=None):
        # Checkpoint and state change together: an interrupt waits for both.
        with deferred_interrupts():
            self._record(epoch, logs or {})

    def _record(self, epoch, logs):
        model = self.model_to_save or self.model
        self.run_dir.save_model(model, self.run_dir.last_checkpoint)
        score = logs.get(self.monitor)
        if self.monitor_op is None:
            self._set_monitor_op()
        if score is not None and not math.isnan(score) and self._is_improvement(
            score, self.state.get("best")
        ):
            self.run_dir.save_model(model, self.run_dir.best_checkpoint)
            self.state["best"] = float(score)
            self.state["best_epoch"] = epoch + 1
        self.state["epoch"] = epoch + 1
        self.state["stage"] = self.stage_name
        self.run_dir.write_json("state.json", self.state)


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Raises `TrainingDiverged` at the first batch whose loss is NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN`, which lets the epoch end (and
    so a checkpoint of NaN weights be written), training stops inside the
    batch: the checkpoints keep the last finite epoch.

    Args:
        stage_name: the stage being trained, for the message.
    """

    def __init__(self, stage_name):
        super().__init__()
        self.stage_name = stage_name
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise TrainingDiverged(self.stage_name, self._epoch + 1, batch + 1, float(loss))


class StageCSVLogger(keras.callbacks.Callback):
    """Appends one row per epoch to `history.csv`, tagged with the stage.

    Unlike `keras.callbacks.CSVLogger`, later stages append to the same file,
    so a resumed run and a staged plan give one continuous history. The
    columns are the first row's; a metric that first appears in a later
    stage (a regulariser's penalty) adds a column, empty in earlier rows.
    """

    def __init__(self, path, stage_name):
        super().__init__()
        self.path = str(path)
        self.stage_name = stage_name

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, "stage": self.stage_name}
        row.update({key: float(value) for key, value in (logs or {}).items()
                    if key != "learning_rate"})
        exists = os.path.isfile(self.path) and os.path.getsize(self.path) > 0
        if exists:
            with open(self.path, newline="") as handle:
                fields = next(csv.reader(handle))
            new = [key for key in row if key not in fields]
            if new:
                self._add_columns(fields + new)
                fields += new
        else:
            fields = list(row)
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if not exists:
                writer.writeheader()
            writer.writerow(row)

    def _add_columns(self, fields):
        with open(self.path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        folder, name = os.path.split(self.path)
        tmp = os.path.join(folder, f".{name}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
