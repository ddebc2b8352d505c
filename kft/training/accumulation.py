"""Gradient accumulation: one optimizer update from the gradients of N batches.

With `accumulate=N` a run trains as if each batch were N times larger
(the update uses the mean gradient of N batches) at the memory of one
batch. Keras' optimizers do the accumulation (`gradient_accumulation_steps`);
kft sizes learning-rate schedules in updates and makes them advance once per
update, not once per batch (`kft.schedules.PerUpdateSchedule`).
"""

from kft.errors import KftError


def check_accumulate(steps):
    """Returns `steps` as an int >= 1, else raises `KftError`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise KftError(f"accumulate must be a whole number of batches >= 1, got {steps!r}.")
    return steps


def accumulate_gradients(optimizer, steps):
    """Makes `optimizer` update once every `steps` batches, with their mean gradient.

    Args:
        optimizer: a Keras optimizer, not yet built (for
            `kft.optimizers.LayerwiseLR`, pass the one it wraps).
        steps: batches per update; 1 leaves the optimizer as it is.

    Returns:
        The optimizer.
    """
    steps = check_accumulate(steps)
    if steps == 1:
        return optimizer
    own = optimizer.gradient_accumulation_steps
    if own and own != steps:
        raise KftError(
            f"The optimizer already accumulates {own} batches; accumulate={steps} "
            "would contradict it. Set one of them."
        )
    if optimizer.built:
        raise KftError("Gradient accumulation must be set before the optimizer is built.")
    optimizer.gradient_accumulation_steps = steps
    return optimizer
