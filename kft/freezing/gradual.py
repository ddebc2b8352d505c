"""Gradual unfreezing (ULMFiT) inside a single `model.fit`.

Training starts with the top groups (usually just the head) trainable; at each
point of the schedule the next frozen group, top-down, starts training. Three
things make that work in Keras 3: the optimizer is built over every variable
that will train before the first step (`kft.prepare_optimizer`), the groups are
unfrozen with `kft.unfreeze` (so frozen BatchNormalization layers stay frozen),
and the train function is re-traced (`make_train_function(force=True)`) so the
next step sees the new variable list while the optimizer keeps its state.
"""

import keras
import numpy as np

from kft.errors import KftError
from kft.freezing.freeze import unfreeze
from kft.freezing.groups import layer_groups
from kft.model_tree import is_batch_norm
from kft.freezing.prepare import prepare_optimizer
from kft.freezing.prepare import trainable_candidates
from kft.freezing.prepare import unknown_variables
from kft.select import Where


@keras.saving.register_keras_serializable(package="kft")
class GradualUnfreezing(keras.callbacks.Callback):
    """Unfreezes layer groups top-down on a schedule, within one `fit`.

    Groups come from `kft.layer_groups(model)`. At the start of training the
    top groups that already train (typically the head) are left alone; the
    groups below them are unfrozen one schedule point at a time, top-down,
    `groups_per_point` at a time. Give exactly one schedule:
    `every_epochs=N` (at the start of epochs N, 2N, ...), `at_epochs=[...]`
    (at the start of those 0-based epochs), or `at_steps=[...]` (after that
    many training steps, counted across epochs; with `steps_per_execution`
    > 1, at the first execution boundary at or after the step).

    Newly unfrozen variables train from the next step; optimizer state of the
    variables that were already training is kept. The optimizer must have
    slots for the variables to unfreeze: without a distribution strategy the
    callback builds it at the start of training; under a `tf.distribute`
    strategy Keras builds it before callbacks run, so call
    `kft.prepare_optimizer(model)` after `compile` and before `fit`.

    When `fit` resumes at a later `initial_epoch` (or with an optimizer whose
    step count is past some points), the points already passed are applied
    at once.

    Args:
        every_epochs: unfreeze every this many epochs.
        at_epochs: 0-based epochs at whose start to unfreeze.
        at_steps: global step counts after which to unfreeze.
        groups_per_point: groups unfrozen at each point.
        train_bn: also unfreeze the groups' frozen BatchNormalization layers.
        verbose: print a line at each unfreeze point.

    Example:
    ```python
    kft.freeze(model, "all")
    kft.unfreeze(model, "head")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(data, epochs=8, callbacks=[kft.GradualUnfreezing(every_epochs=2)])
    ```
    """

    def __init__(
        self,
        every_epochs=None,
        at_epochs=None,
        at_steps=None,
        groups_per_point=1,
        train_bn=False,
        verbose=1,
    ):
        super().__init__()
        given = [x is not None for x in (every_epochs, at_epochs, at_steps)]
        if sum(given) != 1:
            raise KftError(
                "GradualUnfreezing needs exactly one schedule: every_epochs=N, "
                "at_epochs=[...] or at_steps=[...]."
            )
        if every_epochs is not None and int(every_epochs) < 1:
            raise KftError(f"every_epochs must be at least 1, got {every_epochs}.")
        for name, points in (("at_epochs", at_epochs), ("at_steps", at_steps)):
            if points is not None and (not points or any(int(p) < 0 for p in points)):
                raise KftError(f"{name} must be a non-empty list of counts >= 0, got {points}.")
        if int(groups_per_point) < 1:
            raise KftError(f"groups_per_point must be at least 1, got {groups_per_point}.")
        self.every_epochs = None if every_epochs is None else int(every_epochs)
        self.at_epochs = None if at_epochs is None else sorted(int(e) for e in at_epochs)
        self.at_steps = None if at_steps is None else sorted(int(s) for s in at_steps)
        self.groups_per_point = int(groups_per_point)
        self.train_bn = bool(train_bn)
        self.verbose = verbose
        self.unfrozen = []

    def get_config(self):
        return {
            "every_epochs": self.every_epochs,
            "at_epochs": self.at_epochs,
            "at_steps": self.at_steps,
            "groups_per_point": self.groups_per_point,
            "train_bn": self.train_bn,
            "verbose": self.verbose,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def on_train_begin(self, logs=None):
        groups = layer_groups(self.model)
        queue = list(reversed(groups))
        while queue and queue[0].trainable_variables:
            queue.pop(0)
        self._queue = queue
        self._done = 0
        self.unfrozen = []
        self._prepare(queue)
        self._step = int(np.asarray(keras.ops.convert_to_numpy(self.model.optimizer.iterations)))
        self._epoch_start_step = self._step
        self._epoch = 0
        if self.at_steps is not None:
            self._unfreeze_points(sum(s <= self._step for s in self.at_steps))

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_start_step = self._step
        if self.every_epochs is not None:
            self._unfreeze_points(epoch // self.every_epochs)
        elif self.at_epochs is not None:
            self._unfreeze_points(sum(e <= epoch for e in self.at_epochs))

    def on_train_batch_begin(self, batch, logs=None):
        if self.at_steps is not None:
            step = self._epoch_start_step + batch
            self._unfreeze_points(sum(s <= step for s in self.at_steps))

    def on_train_batch_end(self, batch, logs=None):
        self._step = self._epoch_start_step + batch + 1

    def _prepare(self, queue):
        model = self.model
        trainable = {id(v) for v in model.trainable_variables}
        for group in queue:
            for node in group._nodes:
                if self.train_bn or not is_batch_norm(node.layer):
                    trainable.update(id(v) for v in node.own_variables)
        variables = [v for v in trainable_candidates(model) if id(v) in trainable]
        optimizer = model.optimizer
        if not optimizer.built:
            prepare_optimizer(model, variables=variables)
            return
        missing = unknown_variables(optimizer, variables)
        if missing:
            raise KftError(
                f"GradualUnfreezing: the optimizer was built before training over the "
                f"variables trainable then, so it cannot train {len(missing)} variables "
                f"it would unfreeze (e.g. {missing[0].path}). Keras builds it early under "
                "a distribution strategy: call kft.prepare_optimizer(model) after "
                "model.compile(...) and before model.fit(...)."
            )

    def _unfreeze_points(self, points):
        target = min(points * self.groups_per_point, len(self._queue))
        if target <= self._done:
            return
        groups = self._queue[self._done : target]
        paths = {p for g in groups for p in g.paths}
        unfreeze(self.model, Where(lambda path, layer: path in paths), train_bn=self.train_bn)
        self._done = target
        names = [g.name for g in groups]
        self.unfrozen.append({"epoch": self._epoch, "step": self._step, "groups": names})
        if self.verbose:
            params = sum(g.num_trainable_params for g in groups)
            print(
                f"GradualUnfreezing: epoch {self._epoch + 1}, step {self._step}: "
                f"unfroze {', '.join(names)} ({params:,} parameters)"
            )
