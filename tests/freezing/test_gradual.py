"""GradualUnfreezing, proven with weights: plain, jit-compiled and under MirroredStrategy.

After each unfreeze point the newly unfrozen variables change, still-frozen ones
(and frozen BatchNorm statistics) stay bit-identical, and the optimizer moments
of the variables that were already training are carried over, not reset.
"""

import contextlib
import textwrap

import keras
import numpy as np
import pytest

from kft.errors import KftError
from kft.freezing import GradualUnfreezing
from kft.freezing import freeze
from kft.freezing import prepare_optimizer
from kft.freezing import unfreeze
from tests.helpers.tiny_models import tiny_classifier
from tests.helpers.tiny_models import tiny_data
from tests.helpers.tiny_models import tiny_text_classifier
from tests.helpers.tiny_models import tiny_text_data
from tests.helpers.tiny_models import values
from tests.helpers.process import REPO as PROCESS_REPO
from tests.helpers.process import run_script

REPO = str(PROCESS_REPO)


class _Recorder(keras.callbacks.Callback):
    """Snapshots weights and optimizer slots; listed after GradualUnfreezing."""

    def __init__(self, watch):
        super().__init__()
        self.watch = watch
        self.epoch_begin, self.epoch_end, self.step_end = [], [], []

    def _slots(self):
        optimizer = self.model.optimizer
        slots = {}
        for variable in self.model.weights:
            if variable.path in self.watch:
                index = optimizer._get_variable_index(variable)
                for name in ("_momentums", "_velocities"):
                    if hasattr(optimizer, name):
                        slots[(variable.path, name)] = np.array(getattr(optimizer, name)[index])
        return slots

    def _snapshot(self):
        return values(self.model), self._slots(), self.model.optimizer

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_begin.append(self._snapshot())

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_end.append(self._snapshot())

    def on_train_batch_end(self, batch, logs=None):
        self.step_end.append(values(self.model))


def _changed(before, after):
    return {p for p in before if not np.array_equal(before[p], after[p])}


def _head_only_model(strategy, jit_compile, optimizer):
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = tiny_classifier()
        freeze(model)
        unfreeze(model, "head")
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy",
                      jit_compile=jit_compile)
        if strategy is not None:
            prepare_optimizer(model)
    return model


HEAD = {"head_dense/kernel", "head_dense/bias"}
CONV3 = {"conv3/kernel", "conv3/bias"}
CONV2 = {"conv2/kernel", "conv2/bias"}
BN3 = {"bn3/gamma", "bn3/beta", "bn3/moving_mean", "bn3/moving_variance"}


def check_epoch_schedule(strategy=None, jit_compile=False):
    model = _head_only_model(strategy, jit_compile, lambda: keras.optimizers.Adam(0.05))
    x, y = tiny_data(32)
    gradual = GradualUnfreezing(every_epochs=1, verbose=0)
    recorder = _Recorder(watch={"head_dense/kernel", "conv3/kernel"})
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[gradual, recorder])

    assert [u["groups"] for u in gradual.unfrozen] == [["group_4"], ["group_3"]]
    assert [u["epoch"] for u in gradual.unfrozen] == [1, 2]
    changed = [_changed(b[0], e[0]) for b, e in zip(recorder.epoch_begin, recorder.epoch_end)]
    assert changed[0] == HEAD
    # Frozen BatchNorm of the unfrozen group: weights and statistics untouched.
    assert changed[1] == HEAD | CONV3
    assert changed[2] == HEAD | CONV3 | CONV2
    assert not changed[2] & BN3

    # Across the unfreeze point: same optimizer, the head's moments carried over
    # bit for bit, the newly unfrozen kernel's slots start at zero and then move.
    end0, begin1, end1 = recorder.epoch_end[0], recorder.epoch_begin[1], recorder.epoch_end[1]
    assert end0[2] is begin1[2] is model.optimizer
    for slot in ("_momentums", "_velocities"):
        head_moment = end0[1][("head_dense/kernel", slot)]
        assert np.abs(head_moment).sum() > 0
        np.testing.assert_array_equal(begin1[1][("head_dense/kernel", slot)], head_moment)
        assert not begin1[1][("conv3/kernel", slot)].any()
        assert end1[1][("conv3/kernel", slot)].any()
    assert int(model.optimizer.iterations.numpy()) == 12


def check_step_schedule(strategy=None, jit_compile=False):
    # SGD with momentum: the preparation does not assume Adam.
    model = _head_only_model(
        strategy, jit_compile, lambda: keras.optimizers.SGD(0.1, momentum=0.9)
    )
    x, y = tiny_data(32)
    gradual = GradualUnfreezing(at_steps=[2, 5], verbose=0)
    recorder = _Recorder(watch=set())
    start = values(model)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[gradual, recorder])
    snapshots = [start] + recorder.step_end
    changed = [_changed(a, b) for a, b in zip(snapshots, snapshots[1:])]
    assert changed[:2] == [HEAD, HEAD]
    assert changed[2:5] == [HEAD | CONV3] * 3
    assert changed[5:] == [HEAD | CONV3 | CONV2] * 3
    assert [u["step"] for u in gradual.unfrozen] == [2, 5]


def test_epoch_schedule():
    check_epoch_schedule()


def test_step_schedule_with_sgd_momentum():
    check_step_schedule()


def test_jit_compile():
    check_epoch_schedule(jit_compile=True)


def test_train_bn_unfreezes_batch_norm_of_each_group():
    model = _head_only_model(None, False, lambda: keras.optimizers.Adam(0.05))
    x, y = tiny_data(16)
    before = values(model)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
              callbacks=[GradualUnfreezing(at_epochs=[1], train_bn=True, verbose=0)])
    assert _changed(before, values(model)) == HEAD | CONV3 | BN3


def test_keras_hub_transformer_layers_unfreeze_top_down():
    model = tiny_text_classifier(num_layers=2)
    freeze(model)
    unfreeze(model, "head")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    x, y = tiny_text_data(16)
    gradual = GradualUnfreezing(every_epochs=1, verbose=0)
    recorder = _Recorder(watch=set())
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0,
              callbacks=[gradual, recorder])
    assert [u["groups"] for u in gradual.unfrozen] == [["pooler"], ["transformer_layer_1"]]
    last = _changed(recorder.epoch_begin[2][0], recorder.epoch_end[2][0])
    assert {p.split("/")[0] for p in last} == {"head_dense", "pooled_dense", "transformer_layer_1"}
    assert any("transformer_layer_1/self_attention_layer/key" in p for p in last)


def test_per_group_learning_rates_apply_to_groups_unfrozen_later():
    from kft.optimizers import LayerwiseLR

    model = tiny_classifier()
    freeze(model)
    unfreeze(model, "head")
    # group_3 (conv2) gets multiplier 0: once unfrozen it must still not move,
    # so the rate was assigned when the optimizer was built over it up front.
    optimizer = LayerwiseLR(keras.optimizers.SGD(0.1), multipliers={"group_3": 0.0}, model=model)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    x, y = tiny_data(16)
    gradual = GradualUnfreezing(every_epochs=1, verbose=0)
    before = values(model)
    model.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0, callbacks=[gradual])
    assert [u["groups"] for u in gradual.unfrozen] == [["group_4"], ["group_3"]]
    assert {v.path for v in model.trainable_variables} == HEAD | CONV3 | CONV2
    assert _changed(before, values(model)) == HEAD | CONV3


def test_resuming_applies_points_already_passed():
    model = _head_only_model(None, False, lambda: keras.optimizers.Adam(0.05))
    x, y = tiny_data(16)
    gradual = GradualUnfreezing(every_epochs=1, groups_per_point=1, verbose=0)
    model.fit(x, y, batch_size=8, epochs=3, initial_epoch=2, verbose=0, callbacks=[gradual])
    assert gradual.unfrozen == [{"epoch": 2, "step": 0, "groups": ["group_4", "group_3"]}]


def test_optimizer_built_over_fewer_variables_is_a_clear_error():
    model = _head_only_model(None, False, lambda: keras.optimizers.Adam(0.05))
    x, y = tiny_data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(KftError, match=r"kft.prepare_optimizer\(model\)"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0,
                  callbacks=[GradualUnfreezing(every_epochs=1, verbose=0)])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"every_epochs": 1, "at_steps": [3]}, {"every_epochs": 0}, {"at_epochs": []},
     {"at_steps": [2], "groups_per_point": 0}],
)
def test_bad_schedules_are_clear_errors(kwargs):
    with pytest.raises(KftError):
        GradualUnfreezing(**kwargs)


def test_config_round_trip():
    gradual = GradualUnfreezing(at_steps=[10, 20], groups_per_point=2, train_bn=True, verbose=0)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(gradual))
    assert isinstance(restored, GradualUnfreezing)
    assert restored.get_config() == gradual.get_config()


_STRATEGY_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {repo!r})
    import keras, pytest
    from kft.errors import KftError
    from kft.freezing import GradualUnfreezing, freeze, unfreeze
    from tests.helpers.tiny_models import tiny_classifier, tiny_data
    from tests.freezing.test_gradual import check_epoch_schedule, check_step_schedule

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    check_epoch_schedule(strategy=strategy)
    check_step_schedule(strategy=strategy)

    # Keras builds the optimizer before callbacks run under a strategy.
    with strategy.scope():
        model = tiny_classifier()
        freeze(model)
        unfreeze(model, "head")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = tiny_data(16)
    with pytest.raises(KftError, match="prepare_optimizer"):
        model.fit(x, y, batch_size=8, verbose=0,
                  callbacks=[GradualUnfreezing(every_epochs=1, verbose=0)])
    print("STRATEGY CHECKS PASSED")
    """
)


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus():
    # Logical devices must be configured before TensorFlow initialises, so
    # this runs in its own process and leaves the test process untouched.
    result = run_script(_STRATEGY_SCRIPT.format(repo=REPO))
    assert "STRATEGY CHECKS PASSED" in result.stdout
