"""The base of kft's regularisers, and `Regularized`, the model that trains with one.

A regulariser is a penalty on the training loss that keeps a fine-tuned model
near what the pretrained model knew: near its weights (`L2SP`), its outputs
(`OutputKL`) or its features (`FeatureDistance`). It is bound to the model when
a stage starts (`bind`): what it compares against is taken then and held as
non-trainable copies, never trained.

Why a wrapper model: the penalty has to see each batch (KL and feature
distance compare the model with the reference on the same inputs) and must not
become part of the model that is saved and served. A Keras loss sees only
`(y_true, y_pred)`; `model.add_loss` or a replaced `train_step` changes the
user's model itself (keras-hub tasks have their own `compile` and `fit`, and a
forked train step would have to redo loss scaling, distribution and metrics).
`Regularized` is a small `keras.Model` around the model being trained that
overrides only `compute_loss`, Keras' documented hook for extra loss terms, so
Keras' own train and test steps run unchanged. It shares the model's layers and
variables (as the feature cache's head model does): fitting it trains the
model, and the model saves, reloads and serves without the regulariser.
"""

import threading

import keras
from keras import ops

# Keras scales a loss by 1 / replicas under tf.distribute (the gradients of
# the replicas are summed); the penalty is part of the loss, so it is too.
from keras.src.losses.loss import scale_loss_for_distribution

from kft.errors import KftError


class Regularizer:
    """A penalty added to a model's training loss; see the module docstring.

    Subclasses set `name` (the history shows `<name>_penalty`), `needs_inputs`
    (the penalty depends on the batch, so the backbone must run on it: no
    feature caching) and implement `_bind` and `penalty`.

    Args:
        model: the model to bind to now, or `None` to bind later (a
            `kft.Stage(regularize=...)` is bound when its stage starts).
    """

    name = None
    needs_inputs = False

    def __init__(self, model=None):
        # Subclasses set their settings first, then call this.
        self.model = None
        if model is not None:
            self.bind(model)

    @property
    def metric_name(self):
        """The name of the penalty in the logs and the history (`l2sp_penalty`)."""
        return f"{self.name}_penalty"

    @property
    def bound(self):
        return self.model is not None

    def bind(self, model, reference=None):
        """Takes what the penalty compares against from `model` as it is now.

        Call it after the stage's freezing: a regulariser on weights covers
        the variables trainable at this point.

        Args:
            model: a built Keras model.
            reference: the `reference_arrays()` of an earlier `bind` to the
                same model (a resumed run restores the stage's start), or
                `None` to take the model's current state.

        Returns:
            `self`.
        """
        if not isinstance(model, keras.Model) or not model.built:
            raise KftError(
                f"{type(self).__name__} needs a built Keras model (call it on a batch "
                f"first), got {model!r}."
            )
        with model.distribute_strategy.scope():
            self._bind(model, reference)
        self.model = model
        return self

    def reference_arrays(self):
        """What the penalty compares against, as `{key: numpy array}` (to save)."""
        self._require_bound()
        return {}

    def forward(self, model, inputs, training):
        """Runs `model` for `Regularized.call`: `(outputs, extras for penalty)`."""
        return model(inputs, training=training), None

    def penalty(self, inputs, outputs, extras=None, sample_weight=None):
        """The penalty for one batch, weighted: a float32 scalar the loss gains.

        Args:
            inputs: the batch's inputs.
            outputs: the model's outputs on them (this step's forward pass).
            extras: what `forward` returned besides the outputs.
            sample_weight: the batch's sample weights, or `None`.
        """
        raise NotImplementedError

    def _bind(self, model, reference):
        raise NotImplementedError

    def _require_bound(self):
        if self.model is None:
            raise KftError(
                f"{self!r} is not bound to a model yet: pass the model when creating it "
                "or call .bind(model) when the stage starts."
            )


class Regularized(keras.Model):
    """Trains `model` with `regularizer`'s penalty added to its loss.

    `loss` in the logs is the task loss plus the penalty (what is minimised);
    `val_loss` stays the task loss alone, so a checkpoint picked on it does not
    depend on the regulariser. The penalty is logged on its own as
    `<name>_penalty` (training batches) and `val_<name>_penalty` (validation).
    `save` and `save_weights` save `model` alone.

    Args:
        model: the model being trained (or a model sharing its layers, such as
            the head of `kft.training.feature_cache.split_at_head`, for a
            regulariser that needs no inputs).
        regularizer: a bound `Regularizer`.

    Example:
    ```python
    kft.freeze(model); kft.unfreeze(model, "groups:2")
    trainer = kft.regularizers.Regularized(
        model, kft.regularizers.L2SP(model, alpha=0.01, beta=0.001))
    trainer.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                    metrics=["accuracy"])
    trainer.fit(train, validation_data=validation, epochs=3)
    model.save("tuned.keras")  # no regulariser inside
    ```
    """

    def __init__(self, model, regularizer, name=None):
        if not isinstance(regularizer, Regularizer):
            raise KftError(f"Regularized needs a kft.regularizers object, got {regularizer!r}.")
        regularizer._require_bound()
        if regularizer.needs_inputs and model is not regularizer.model:
            raise KftError(
                f"{regularizer!r} compares the model with its reference on each batch, so "
                "it trains the model it is bound to, not a part of it (turn feature "
                "caching off)."
            )
        super().__init__(name=name or f"{model.name}_regularized")
        self.model = model
        self.regularizer = regularizer
        self.penalty_tracker = keras.metrics.Mean(name=regularizer.metric_name)
        # What `call` hands to `compute_loss` in the same step (the current
        # features); per thread, as MirroredStrategy traces each replica in its own.
        object.__setattr__(self, "_step", threading.local())
        self.built = True

    def call(self, inputs, training=None):
        outputs, extras = self.regularizer.forward(self.model, inputs, training)
        self._step.extras = extras
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        extras = getattr(self._step, "extras", None)
        self._step.extras = None
        penalty = self.regularizer.penalty(x, y_pred, extras=extras,
                                           sample_weight=sample_weight)
        self.penalty_tracker.update_state(penalty)
        if not training:
            return loss
        return ops.add(loss, ops.cast(scale_loss_for_distribution(penalty), loss.dtype))

    def save(self, *args, **kwargs):
        return self.model.save(*args, **kwargs)

    def save_weights(self, *args, **kwargs):
        return self.model.save_weights(*args, **kwargs)


def masked_mean(values, sample_weight):
    """The mean of per-example (or per-position) `values`, over the entries
    whose sample weight is above zero (a padding mask, a zero-weight example);
    the weights' sizes do not matter here (class weights do not reweight the
    penalty)."""
    values = ops.cast(values, "float32")
    if sample_weight is None:
        return ops.mean(values)
    mask = ops.cast(ops.greater(ops.cast(sample_weight, "float32"), 0.0), "float32")
    while len(mask.shape) < len(values.shape):
        mask = ops.expand_dims(mask, -1)
    while len(mask.shape) > len(values.shape):
        mask = ops.max(mask, axis=-1)
    mask = ops.broadcast_to(mask, ops.shape(values))
    return ops.divide(ops.sum(ops.multiply(values, mask)), ops.maximum(ops.sum(mask), 1.0))
