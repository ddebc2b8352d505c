"""Calibration and validation data for quantization, as numpy arrays.

Users hand over what they train with: numpy arrays, or a `tf.data.Dataset`
of `(inputs, labels)` batches such as `kft.data.images.ImageData.train`.
"""

import numpy as np
import tensorflow as tf

from kft.errors import KftError


def input_examples(data, model_input, count):
    """Up to `count` model inputs from `data`, as one array.

    Args:
        data: an array `[N, ...]` of inputs, an `(inputs, labels)` pair, or a
            `tf.data.Dataset` of inputs or `(inputs, labels)`, batched or not.
        model_input: the `kft.export.signatures.ModelInput` they are for.
        count: the most examples to take.

    Returns:
        An array `[n, *model_input.shape]` of the model's input dtype.
    """
    if isinstance(data, tf.data.Dataset):
        batches, taken = [], 0
        for element in data:
            inputs = _first(element)
            inputs = np.asarray(inputs)
            if inputs.ndim == len(model_input.shape):
                inputs = inputs[None]
            batches.append(inputs)
            taken += len(inputs)
            if taken >= count:
                break
        if not batches:
            raise KftError("The representative data set is empty: pass some training examples.")
        inputs = np.concatenate(batches)
    else:
        inputs = np.asarray(_first(data))
    return _as_model_input(inputs[:count], model_input)


def labelled_examples(data, model_input):
    """All `(inputs, labels)` of `data`, with integer labels.

    Args:
        data: an `(inputs, labels)` pair of arrays, or a `tf.data.Dataset` of
            `(inputs, labels)` batches. One-hot labels become indices.
        model_input: the `kft.export.signatures.ModelInput` they are for.

    Returns:
        `(inputs, labels)` numpy arrays.
    """
    if isinstance(data, tf.data.Dataset):
        inputs, labels = [], []
        for element in data:
            x, y = (np.asarray(part) for part in _pair(element))
            unbatched = x.ndim == len(model_input.shape)
            inputs.append(x[None] if unbatched else x)
            labels.append(y[None] if unbatched else y)
        if not inputs:
            raise KftError("The validation data set is empty.")
        inputs, labels = np.concatenate(inputs), np.concatenate(labels)
    else:
        inputs, labels = (np.asarray(part) for part in _pair(data))
    if labels.ndim == 2:
        labels = labels.argmax(axis=-1)
    labels = labels.reshape(-1).astype("int64")
    if len(labels) != len(inputs):
        raise KftError(
            f"The validation data has {len(inputs)} inputs but {len(labels)} labels."
        )
    return _as_model_input(inputs, model_input), labels


def _first(element):
    if isinstance(element, (tuple, list)):
        return element[0]
    if isinstance(element, dict):
        raise KftError("Pass inputs as arrays or (inputs, labels) pairs, not dictionaries.")
    return element


def _pair(element):
    if not isinstance(element, (tuple, list)) or len(element) < 2:
        raise KftError(
            "Validation data must be (inputs, labels): a pair of arrays or a "
            "tf.data.Dataset of (inputs, labels) batches."
        )
    return element[0], element[1]


def _as_model_input(inputs, model_input):
    if model_input.kind == "text":
        return inputs.reshape((-1, *model_input.shape)).astype(object)
    if inputs.ndim == len(model_input.shape):
        inputs = inputs[None]
    if tuple(inputs.shape[1:]) != tuple(model_input.shape):
        raise KftError(
            f"Examples of shape {tuple(inputs.shape[1:])} for a model that takes "
            f"{tuple(model_input.shape)}: resize them like the training data."
        )
    if np.issubdtype(np.dtype(model_input.dtype), np.integer) and not np.issubdtype(
        inputs.dtype, np.integer
    ):
        inputs = np.clip(np.round(inputs), 0, 255)
    return inputs.astype(model_input.dtype)
