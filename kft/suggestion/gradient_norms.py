"""Relative gradient norms per layer group (Auto-RGN, Lee et al. 2022).

A group's relative gradient norm is the norm of the loss gradient over its
weights divided by the norm of those weights: how fast the target task wants
the group to move, relative to its size. Surgical fine-tuning's Auto-RGN sets
each layer's learning rate in proportion to it; kft summarises the profile as
one layer decay.
"""

import keras
import numpy as np
import tensorflow as tf


def relative_gradient_norms(model, batches, groups, loss=None):
    """`||dL/dw|| / ||w||` of each group's weights, the gradient averaged over `batches`.

    The model runs in inference mode (BatchNorm uses its moving statistics,
    dropout is off), as kft fine-tunes with BatchNorm frozen. Only variables
    created as trainable count (not BatchNorm's moving statistics), whether
    or not they are trainable now; nothing is updated.

    Args:
        model: the Keras model.
        batches: a list of `(inputs, labels)` pairs.
        groups: `kft.LayerGroup`s of `model`.
        loss: a Keras loss taking `(labels, outputs)`; sparse categorical
            cross-entropy on probabilities by default.

    Returns:
        A list of floats, one per group (0 for a group without weights).

    Example:
    ```python
    groups = kft.layer_groups(model)
    norms = relative_gradient_norms(model, [(images, labels)], groups)
    ```
    """
    loss = loss or keras.losses.SparseCategoricalCrossentropy()
    # A frozen layer's variables are not trainable, and TensorFlow computes no
    # gradient for them: everything is made trainable for the measurement.
    flags = [(layer, layer.trainable) for layer in model._flatten_layers(include_self=True)]
    try:
        for layer, _ in flags:
            layer.trainable = True
        variables = [[v for v in group.variables if v.trainable] for group in groups]
        flat = [v for group in variables for v in group]
        totals = [np.zeros(v.shape, np.float64) for v in flat]
        for inputs, labels in batches:
            with tf.GradientTape() as tape:
                value = loss(labels, model(inputs, training=False))
            for total, gradient in zip(totals, tape.gradient(value, flat)):
                if gradient is not None:
                    total += np.asarray(tf.convert_to_tensor(gradient), np.float64)
    finally:
        for layer, trainable in flags:
            layer.trainable = trainable
    norms, start = [], 0
    for group in variables:
        gradients = totals[start:start + len(group)]
        start += len(group)
        weight = np.sqrt(sum(float(np.sum(np.square(keras.ops.convert_to_numpy(v))))
                             for v in group))
        gradient = np.sqrt(sum(float(np.sum(np.square(g))) for g in gradients)) / len(batches)
        norms.append(gradient / weight if weight > 0 else 0.0)
    return norms
