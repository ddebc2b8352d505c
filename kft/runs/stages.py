"""A recipe's stages as a run carries them out: what trains, where each starts, how long."""

from kft import freezing
from kft.errors import KftError
from kft.model_tree import count_params


def apply_stage_trainable(model, stage):
    """Freezes everything, unfreezes what `stage` trains.

    Args:
        model: the model.
        stage: a `kft.Stage`.

    Returns:
        The number of trainable parameters afterwards.
    """
    freezing.freeze(model)
    freezing.unfreeze(model, select=stage.train, train_bn=stage.train_bn)
    return count_params(model.trainable_variables)


def stage_starts(stages):
    """The epoch (counted over the whole run) at which each stage starts."""
    starts, epoch = [], 0
    for stage in stages:
        starts.append(epoch)
        epoch += stage.epochs
    return starts


def unfreezes_gradually(stage):
    """Whether `stage` unfreezes groups inside its `fit` (`GradualUnfreezing`)."""
    return any(isinstance(callback, freezing.GradualUnfreezing) for callback in stage.callbacks)


def steps_per_epoch(data):
    """Batches in an epoch of `data.train`."""
    steps = int(data.train.cardinality())
    if steps <= 0:
        raise KftError("The training data has no known number of batches; use a finite dataset.")
    return steps
