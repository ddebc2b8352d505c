"""The runner trains exactly what each stage declares, stage after stage."""

import keras
import numpy as np
import pytest

from kft.runs import runner
from kft.data import images
from kft.runs.recipe import Recipe, Stage
from tests.helpers.tiny_models import random_images, tiny_image_model


class _Snapshot(keras.callbacks.Callback):
    """Records every weight when a stage's fit starts."""

    def __init__(self):
        super().__init__()
        self.weights = None

    def on_train_begin(self, logs=None):
        self.weights = {v.path: keras.ops.convert_to_numpy(v).copy() for v in self.model.weights}


def _run(stages, verbose=True, **params):
    x, y = random_images(48)
    return runner.run(verbose=verbose, recipe=Recipe(
        name="tiny",
        params=dict(seed=0, **params),
        data=lambda p: images.from_arrays(x, y, batch_size=8, seed=p.seed),
        model=lambda p, data: tiny_image_model(len(data.class_names)),
        stages=lambda p: stages,
    ))


def _weights(model):
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


@pytest.mark.parametrize("train_bn", [False, True])
def test_stage_two_trains_its_selection_and_nothing_else(run_in_tmp, train_bn):
    snapshot = _Snapshot()
    result = _run([
        Stage("head", epochs=1, train="head", lr=0.05),
        Stage("finetune", epochs=2, train="head,name:block2_.*", lr=0.05,
              train_bn=train_bn, callbacks=[snapshot]),
    ])
    before, after = snapshot.weights, _weights(result.model)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}

    assert {"head_dense/kernel", "block2_conv/kernel", "block2_conv/bias"} <= changed
    block2_bn = {path for path in before if path.startswith("block2_bn/")}
    if train_bn:
        # Trained BatchNorm: gamma/beta learn and moving statistics update.
        assert block2_bn <= changed
    else:
        assert not (block2_bn & changed)
    # Never selected: block1, its BatchNorm moving statistics included.
    assert not {path for path in changed if path.startswith("block1_")}
    assert {path for path in before if path.startswith("block1_bn/moving")} == {
        "block1_bn/moving_mean", "block1_bn/moving_variance"}


def test_head_stage_leaves_the_backbone_bit_identical(run_in_tmp):
    built = {}
    x, y = random_images(48)

    def model(p, data):
        built["model"] = tiny_image_model(len(data.class_names))
        built["initial"] = _weights(built["model"])
        return built["model"]

    result = runner.run(Recipe(
        name="tiny", params={"seed": 0},
        data=lambda p: images.from_arrays(x, y, batch_size=8, seed=0),
        model=model,
        stages=lambda p: [Stage("head", epochs=2, train="head", lr=0.05)],
    ))
    after = _weights(result.model)
    for path, value in built["initial"].items():
        if path.startswith("head_"):
            assert not np.array_equal(value, after[path]), path
        else:
            np.testing.assert_array_equal(value, after[path], err_msg=path)


def test_metrics_and_summary_are_written(run_in_tmp):
    result = _run([Stage("all", epochs=3, train="all", lr=0.05)])
    assert result.metrics["final"]["val_accuracy"] > 0.5
    assert set(result.metrics["stages"][0]) == {"name", "epochs", "seconds", "trainable", "metrics"}
    assert result.run_dir.read_json("state.json")["epoch"] == 3
    saved = keras.saving.load_model(result.run_dir.final_model)
    probe = random_images(4)[0]
    np.testing.assert_allclose(saved.predict(probe, verbose=0), result.model.predict(probe, verbose=0),
                               rtol=1e-6)


def test_gradual_unfreezing_inside_a_stage_trains_the_backbone_top_down(run_in_tmp):
    from kft.freezing import GradualUnfreezing

    snapshot = _Snapshot()
    result = _run([
        Stage("gradual", epochs=2, train="head", lr=0.05,
              callbacks=[snapshot, GradualUnfreezing(every_epochs=1, verbose=0)]),
    ])
    before, after = snapshot.weights, _weights(result.model)
    assert not np.array_equal(before["block2_conv/kernel"], after["block2_conv/kernel"])
    # One unfreeze point: the lowest convolution never trained.
    np.testing.assert_array_equal(before["block1_conv/kernel"], after["block1_conv/kernel"])


def test_early_stopping_ends_a_stage_with_its_best_weights_where_the_plan_says(
        run_in_tmp, capsys):
    class _Record(keras.callbacks.Callback):
        """Weights and val_loss at each epoch end; a rising val_loss from epoch 2 on."""

        def __init__(self):
            super().__init__()
            self.weights, self.epochs = [], []

        def on_epoch_end(self, epoch, logs=None):
            # Overwriting the logged val_loss: epoch 1 (of the stage) is best.
            logs["val_loss"] = float(abs(epoch - 1))
            self.epochs.append(epoch)
            self.weights.append(_weights(self.model))

    class _Checkpointed(keras.callbacks.Callback):
        """The last checkpoint's weights when the next stage starts (where a resume starts)."""

        def on_train_begin(self, logs=None):
            (path,) = run_in_tmp.glob("runs/tiny-*/checkpoints/last.keras")
            self.weights = _weights(keras.saving.load_model(path))

    record, snapshot, checkpointed = _Record(), _Snapshot(), _Checkpointed()
    result = _run([
        Stage("head", epochs=10, train="head", lr=0.05, early_stopping=2,
              callbacks=[record]),
        Stage("finetune", epochs=1, train="all", lr=0.05, callbacks=[snapshot, checkpointed]),
    ])
    # Best at epoch index 1; two epochs without improvement end it after the 4th.
    assert record.epochs == [0, 1, 2, 3]
    assert "head ended after 4 of 10 epochs, with the weights of epoch 2" in (
        capsys.readouterr().out)
    # The head trained on cached features: `best` holds the head's weights.
    best = record.weights[1]
    assert "head_dense/kernel" in best
    for path, value in best.items():
        np.testing.assert_array_equal(snapshot.weights[path], value, err_msg=path)
        np.testing.assert_array_equal(checkpointed.weights[path], value, err_msg=path)
    assert not np.array_equal(record.weights[3]["head_dense/kernel"], best["head_dense/kernel"])
    # The next stage starts at its planned epoch (10), the state counts 11.
    rows = result.metrics["stages"]
    assert [row["epochs"] for row in rows] == [4, 1]
    assert rows[0]["metrics"]["val_loss"] == 0.0
    assert result.run_dir.read_json("state.json")["epoch"] == 11
    history = result.run_dir.path.joinpath("history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["0", "1", "2", "3", "10"]


def test_cache_features_true_trains_the_head_on_un_augmented_features(run_in_tmp, capsys):
    from tests.helpers.tiny_models import tiny_classifier

    x, y = random_images(48)
    snapshot = _Snapshot()
    result = runner.run(Recipe(
        name="tiny", params={"seed": 0},
        data=lambda p: images.from_arrays(x, y, batch_size=8, seed=0),
        model=lambda p, data: tiny_classifier(augment=True),
        stages=lambda p: [Stage("head", epochs=2, train="head", lr=0.05, cache_features=True,
                                callbacks=[snapshot])],
    ))
    assert "backbone features computed once" in capsys.readouterr().out
    # The head fitted a head-only model: its inputs are pooled features.
    assert set(snapshot.weights) == {"head_dense/kernel", "head_dense/bias"}
    assert not np.array_equal(snapshot.weights["head_dense/kernel"],
                              _weights(result.model)["head_dense/kernel"])


def test_early_stopping_needs_validation_data(run_in_tmp):
    from kft.errors import KftError

    x, y = random_images(16)
    with pytest.raises(KftError, match="sets early_stopping=2, which watches val_loss, but "
                                       "the data has no validation split"):
        runner.run(verbose=False, recipe=Recipe(
            name="tiny", params={"seed": 0},
            data=lambda p: images.from_arrays(x, y, batch_size=8, validation_split=0.0, seed=0),
            model=lambda p, data: tiny_image_model(len(data.class_names)),
            stages=lambda p: [Stage("head", epochs=3, train="head", early_stopping=2)],
        ))


def test_library_runs_are_quiet_unless_verbose(run_in_tmp, capsys):
    _run([Stage("all", epochs=1, train="all", lr=0.05)], verbose=False)
    assert capsys.readouterr().out == ""
    _run([Stage("all", epochs=1, train="all", lr=0.05)])
    assert "Summary" in capsys.readouterr().out


def test_forgetting_is_scored_before_and_after_and_a_head_stage_forgets_nothing(
        run_in_tmp, capsys, monkeypatch):
    from kft.evaluation import forgetting

    probed = []

    def spy(model, reference, seed=0):
        probed.append((model, forgetting_probe(model, reference, seed)))
        return probed[-1][1]

    forgetting_probe = forgetting.probe
    monkeypatch.setattr(forgetting, "probe", spy)
    x, y = random_images(48)
    # Brightness classes that overlap: a probe scores well below 1, so equal scores mean
    # equal features, not two saturated probes.
    rng = np.random.default_rng(3)
    labels = np.arange(120) % 3
    pixels = labels[:, None, None, None] * 12 + rng.integers(0, 40, (120, 1, 1, 1)) \
        + rng.integers(0, 60, (120, 16, 16, 3))
    result = runner.run(verbose=True, recipe=Recipe(
        name="tiny", params={"seed": 0, "forgetting": "shapes"},
        data=lambda p: images.from_arrays(x, y, batch_size=8, seed=p.seed),
        model=lambda p, data: tiny_image_model(len(data.class_names)),
        forgetting=lambda p: images.from_arrays(pixels.astype("uint8"), labels, batch_size=8),
        stages=lambda p: [Stage("head", epochs=2, train="head", lr=0.05)],
    ))

    saved = result.run_dir.read_json("forgetting.json")
    assert saved["reference"] == "shapes" and saved["measure"] == "accuracy"
    # Scored before the stages, then on the final model.
    assert [model is result.model for model, _ in probed] == [True, True]
    assert [score.value for _, score in probed] == [saved["before"], saved["after"]]
    assert 0.4 < saved["before"] < 0.95
    # The backbone is bit-identical, so are its features and the seeded probe.
    assert saved["after"] == saved["before"] and saved["lost"] == 0.0
    assert result.metrics["forgetting"] == saved
    printed = capsys.readouterr().out
    assert "Forgetting reference shapes: the pretrained model" in printed
    assert "Forgetting (shapes): linear-probe accuracy" in printed
