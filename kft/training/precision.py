"""Mixed precision for a run: the Keras dtype policy, and float32 outputs.

`precision=mixed_float16` (GPUs) or `mixed_bfloat16` (TPUs, recent CPUs and
GPUs) computes in 16 bits and keeps the variables in float32. Keras' `compile`
wraps the optimizer in a `LossScaleOptimizer` for `mixed_float16` (also
around `kft.optimizers.LayerwiseLR`), so small float16 gradients do not
underflow. The layers that produce a model's outputs (the classifier head)
compute in float32, as the Keras mixed-precision guide asks: a float16
softmax rounds small probabilities to 0.
"""

import contextlib

import keras

from kft.errors import KftError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_precision(name):
    """Returns `name` if it is one of `PRECISIONS`, else raises `KftError`."""
    if name not in PRECISIONS:
        raise KftError(f"Unknown precision {name!r}; use one of {', '.join(PRECISIONS)}.")
    return name


@contextlib.contextmanager
def precision_policy(name):
    """Sets Keras' global dtype policy to `name` for the `with` block.

    Models take the policy that is global when they are built (or saved),
    so build or load them inside the block. The previous policy comes back
    afterwards, so later models in the process are unaffected.

    Args:
        name: one of `PRECISIONS`.

    Example:
    ```python
    with kft.training.precision.precision_policy("mixed_bfloat16"):
        model = kft.vision.image_classifier("mobilenetv3small", 5)
    ```
    """
    check_precision(name)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_outputs(model):
    """Makes the layers that produce `model`'s outputs compute in float32.

    A no-op for layers that already do (`kft.vision.image_classifier`'s
    `head_dense` is built float32). For others (keras-hub classifiers build
    their `output_dense` with the backbone's policy) the layer's dtype
    policy is set to float32: its float32 variables stay as they are, it
    casts its 16-bit inputs up.

    Args:
        model: a functional `keras.Model`.

    Returns:
        The names of the layers changed.
    """
    changed = []
    for output in model.outputs or ():
        layer = output._keras_history.operation
        if keras.backend.standardize_dtype(layer.compute_dtype) != "float32":
            layer.dtype_policy = keras.DTypePolicy("float32")
            changed.append(layer.name)
    return changed
