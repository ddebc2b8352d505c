import keras
import numpy as np

from kft.runs.callbacks import RunCheckpoint, StageCSVLogger
from kft.runs.history import read_history
from kft.runs.run_directory import RunDirectory


def _model():
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(inputs))
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_checkpoint_saves_last_every_epoch_and_best_on_improvement(tmp_path):
    run = RunDirectory.create("demo", tmp_path)
    state = {"epoch": 0, "best": None}
    callback = RunCheckpoint(run, state, "head", monitor="val_loss")
    callback.set_model(_model())
    callback.on_epoch_end(0, {"val_loss": 0.5})
    best_first = run.best_checkpoint.stat().st_mtime_ns
    callback.on_epoch_end(1, {"val_loss": 0.7})
    assert run.best_checkpoint.stat().st_mtime_ns == best_first
    assert state == {"epoch": 2, "best": 0.5, "best_epoch": 1, "stage": "head"}
    assert run.read_json("state.json")["epoch"] == 2
    assert run.last_checkpoint.is_file()


def test_best_survives_a_new_callback(tmp_path):
    run = RunDirectory.create("demo", tmp_path)
    state = {"epoch": 0, "best": 0.8}
    callback = RunCheckpoint(run, state, "finetune", mode="max")
    callback.set_model(_model())
    callback.on_epoch_end(4, {"val_accuracy": 0.7})
    assert not run.best_checkpoint.exists()
    callback.on_epoch_end(5, {"val_accuracy": 0.9})
    assert run.best_checkpoint.is_file() and state["best"] == 0.9


def test_history_appends_across_stages_with_fixed_columns(tmp_path):
    path = tmp_path / "history.csv"
    StageCSVLogger(path, "head").on_epoch_end(0, {"loss": 1.0, "accuracy": 0.5, "learning_rate": 0.1})
    StageCSVLogger(path, "finetune").on_epoch_end(1, {"loss": 0.5, "accuracy": 0.75})
    rows = read_history(path)
    assert [row["stage"] for row in rows] == ["head", "finetune"]
    assert [row["loss"] for row in rows] == [1.0, 0.5]
    assert "learning_rate" not in rows[0]
    np.testing.assert_array_equal([row["epoch"] for row in rows], [0.0, 1.0])


def test_mae_is_minimised_like_keras_does(tmp_path):
    # A name-based guess ("loss" in the name, else maximise) would keep the worst.
    from kft.runs.monitor import monitor_mode

    mode = monitor_mode("val_mae", ["mae"])
    assert mode == "min"
    run = RunDirectory.create("demo", tmp_path)
    state = {"epoch": 0, "best": None}
    callback = RunCheckpoint(run, state, "head", monitor="val_mae", mode=mode)
    callback.set_model(_model())
    callback.on_epoch_end(0, {"val_mae": 0.5})
    callback.on_epoch_end(1, {"val_mae": 0.9})
    callback.on_epoch_end(2, {"val_mae": 0.2})
    assert state["best"] == 0.2 and state["best_epoch"] == 3


def test_a_non_finite_loss_stops_inside_the_batch_before_any_checkpoint(tmp_path):
    import pytest

    from kft.errors import TrainingDiverged
    from kft.runs.callbacks import StopOnNonFiniteLoss

    run = RunDirectory.create("demo", tmp_path)
    model = _model()
    x = np.ones((24, 2), "float32")
    x[10] = np.inf  # the third batch of 4
    y = np.zeros(24, "int32")
    state = {"epoch": 0, "best": None}
    with pytest.raises(TrainingDiverged) as stopped:
        model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                  callbacks=[StopOnNonFiniteLoss("head"), RunCheckpoint(run, state, "head")])
    assert (stopped.value.stage, stopped.value.epoch, stopped.value.batch) == ("head", 1, 3)
    assert "the loss became nan in stage 'head', epoch 1, batch 3" in str(stopped.value)
    assert not run.last_checkpoint.exists() and state["epoch"] == 0


def test_a_metric_new_in_a_later_stage_adds_a_column(tmp_path):
    path = tmp_path / "history.csv"
    StageCSVLogger(path, "head").on_epoch_end(0, {"loss": 1.0})
    StageCSVLogger(path, "finetune").on_epoch_end(1, {"loss": 0.5, "l2sp_penalty": 0.25})
    StageCSVLogger(path, "last").on_epoch_end(2, {"loss": 0.4})
    rows = read_history(path)
    assert [row["l2sp_penalty"] for row in rows] == [None, 0.25, None]
    assert [row["loss"] for row in rows] == [1.0, 0.5, 0.4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]
