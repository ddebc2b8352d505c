"""How deep to fine-tune: domain distance and gradient norms per layer group."""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from kft import freezing
from kft.data.datasets import reference_photos
from kft.data.datasets import reference_sentences
from kft.errors import KftError
from kft.model_tree import is_keras_hub_task
from kft.suggestion.activations import group_feature_model
from kft.suggestion.activations import pooled_features
from kft.suggestion.distance import domain_distance
from kft.suggestion.gradient_norms import relative_gradient_norms
from kft.training import feature_cache

# A group is "far" when its distance reaches this share of the largest one...
RELATIVE_FAR = 0.5
# ...and at least this much: below it the target looks like the pretraining
# domain to every group, and only the top group is worth training.
ABSOLUTE_FAR = 0.1
LAYER_DECAY_RANGE = (0.5, 1.0)


@dataclasses.dataclass
class GroupSignal:
    """What `suggest` measured on one layer group.

    Attributes:
        name: the group's name (`kft.layer_groups`).
        distance: linear CKA between the group's pooled features and the
            domain label, target vs reference (`kft.suggestion.distance`), in [0, 1].
        gradient_norm: the group's relative gradient norm on target batches
            (`||dL/dw|| / ||w||`) with a head fitted to the frozen features.
        params: the group's parameter count.
    """

    name: str
    distance: float
    gradient_norm: float
    params: int


@dataclasses.dataclass
class Suggestion:
    """A recommended fine-tuning depth and layer decay, with the evidence.

    Attributes:
        groups: one `GroupSignal` per backbone group, input to output.
        unfreeze: how many backbone groups to train, from the top (the
            recipes' `unfreeze` param); the head trains too.
        layer_decay: the recommended `Stage(layer_decay=...)`.
        threshold: the distance from which a group counts as far.
        samples: target examples compared.
        reference_samples: reference examples compared.
    """

    groups: list
    unfreeze: int
    layer_decay: float
    threshold: float
    samples: int
    reference_samples: int

    @property
    def train(self):
        """The `Stage(train=...)` selection: the top `unfreeze` groups and the head."""
        return f"groups:{self.unfreeze + 1}"

    @property
    def shallowest(self):
        """The name of the lowest group the suggestion trains."""
        return self.groups[len(self.groups) - self.unfreeze].name

    def as_dict(self):
        return {"unfreeze": self.unfreeze, "train": self.train, "layer_decay": self.layer_decay,
                "threshold": self.threshold, "samples": self.samples,
                "reference_samples": self.reference_samples,
                "groups": [dataclasses.asdict(group) for group in self.groups]}


def recommend(distances, gradient_norms):
    """The depth and layer decay that `distances` and `gradient_norms` point to.

    Depth: features that the target data moves far from the pretraining
    domain's are the ones to adapt, and a layer cannot adapt to inputs its
    frozen predecessors map badly, so training starts at the shallowest far
    group (surgical fine-tuning: an input-level shift calls for early
    layers, a shift in high-level content for the top). A group is far when
    its distance is at least `RELATIVE_FAR` of the largest and at least
    `ABSOLUTE_FAR`; with no far group only the top group trains.

    Layer decay: Auto-RGN trains each layer at a rate proportional to its
    relative gradient norm; the decay is the geometric fit of the trained
    groups' norms relative to the top one's (`d**k` for the group `k` below
    the top), clipped to `LAYER_DECAY_RANGE` and rounded to 0.05.

    Args:
        distances: a distance per backbone group, input to output.
        gradient_norms: a relative gradient norm per backbone group.

    Returns:
        `(unfreeze, layer_decay, threshold)`.

    Example:
    >>> recommend([0.1, 0.2, 0.6, 0.8], [1.0, 1.0, 0.5, 1.0])
    (2, 0.5, 0.4)
    """
    if not distances or len(distances) != len(gradient_norms):
        raise KftError("recommend needs one distance and one gradient norm per group.")
    threshold = max(RELATIVE_FAR * max(distances), ABSOLUTE_FAR)
    far = [index for index, distance in enumerate(distances) if distance >= threshold]
    unfreeze = len(distances) - far[0] if far else 1
    top = len(gradient_norms) - 1
    pairs = [(k, gradient_norms[top - k] / gradient_norms[top]) for k in range(1, unfreeze)
             if gradient_norms[top] > 0 and gradient_norms[top - k] > 0]
    decay = 1.0
    if pairs:
        decay = math.exp(sum(k * math.log(r) for k, r in pairs) / sum(k * k for k, _ in pairs))
    low, high = LAYER_DECAY_RANGE
    decay = round(min(high, max(low, decay)) * 20) / 20
    return unfreeze, decay, round(threshold, 6)


def suggest(model, target, reference=None, samples=256, gradient_batches=4, head_epochs=10,
            batch_size=32, seed=0):
    """Measures each layer group against the pretraining domain and recommends a depth.

    For every backbone group, compares the pooled activations of `samples`
    target images with those of as many reference images of the
    pretraining domain (`kft.suggestion.distance.domain_distance`), and
    measures the relative gradient norm of the target loss (a head is first
    fitted for `head_epochs` on the frozen features of the sample, so the
    gradients say what the task wants of the backbone, not of a random
    head). The model's weights and trainable flags are put back afterwards;
    where features cannot be cached (something random or trainable below
    the head) the head fit compiles the model itself, so compile it again
    before training.

    Args:
        model: a kft image classifier (a functional model with a `head_*`
            head and a functional backbone) or text classifier (a keras-hub
            task; its preprocessor tokenizes the texts).
        target: a `tf.data.Dataset` of `(images or texts, labels)` batches
            (a kft data object's `train`), or an `(inputs, labels)` pair of
            arrays.
        reference: examples of the pretraining domain: uint8 `[N, H, W, 3]`
            images at the target's size, or texts; `None` uses crops of
            everyday photos (`kft.data.datasets.reference_photos`) or
            general English sentences (`reference_sentences`).
        samples: target (and reference) examples compared.
        gradient_batches: batches of `batch_size` target examples the
            gradient norms average over.
        head_epochs: epochs of head fitting before the gradients.
        batch_size: examples per forward pass.
        seed: seeds the reference sample and the head's initial weights.

    Returns:
        A `Suggestion`.

    Example:
    ```python
    model = kft.vision.image_classifier("efficientnet_lite0", num_classes=10, image_size=96)
    found = kft.suggest(model, data.train)
    print(found.unfreeze, found.layer_decay, [g.distance for g in found.groups])
    ```
    """
    inputs, labels = _sample(target, samples)
    text = inputs.dtype.kind in "OSU"
    if reference is None:
        reference = (reference_sentences.sentences(len(labels), seed=seed) if text else
                     reference_photos.images(inputs.shape[1:3], count=len(labels), seed=seed))
    reference = np.asarray(reference)
    if not text and reference.shape[1:] != inputs.shape[1:]:
        raise KftError(f"The reference images are {reference.shape[1:]}, the target's "
                       f"{inputs.shape[1:]}; give reference images of the target's size.")
    # A keras-hub task tokenizes in fit/predict, outside its layer graph.
    inputs, reference = _preprocessed(model, inputs), _preprocessed(model, reference)
    groups = [g for g in freezing.layer_groups(model) if g.name != "head"]
    features, names = group_feature_model(model, groups)
    target_features = pooled_features(features, inputs, batch_size)
    reference_features = pooled_features(features, reference, batch_size)
    distances = [domain_distance(t, r) for t, r in zip(target_features, reference_features)]

    weights = model.get_weights()
    flags = [(layer, layer.trainable) for layer in model._flatten_layers(include_self=True)]
    try:
        loss = keras.losses.SparseCategoricalCrossentropy(
            from_logits=not _gives_probabilities(model, inputs))
        _fit_head(model, inputs, labels, loss, head_epochs, batch_size, seed)
        batches = [(_rows(inputs, i, i + batch_size), labels[i:i + batch_size])
                   for i in range(0, len(labels), batch_size)][:gradient_batches]
        norms = relative_gradient_norms(model, batches, groups, loss=loss)
    finally:
        model.set_weights(weights)
        for layer, trainable in flags:
            layer.trainable = trainable
    unfreeze, decay, threshold = recommend(distances, norms)
    signals = [GroupSignal(name, distance, norm, group.num_params)
               for name, distance, norm, group in zip(names, distances, norms, groups)]
    return Suggestion(signals, unfreeze, decay, threshold, len(labels),
                      len(reference_features[0]))


def _sample(target, samples):
    """The first `samples` inputs (images or texts) and labels of `target` as numpy arrays."""
    if isinstance(target, tf.data.Dataset):
        inputs, labels, count = [], [], 0
        for batch in target:
            inputs.append(np.asarray(batch[0]))
            labels.append(np.asarray(batch[1]))
            count += len(labels[-1])
            if count >= samples:
                break
        if not inputs:
            raise KftError("The target data is empty.")
        inputs, labels = np.concatenate(inputs), np.concatenate(labels)
    else:
        inputs, labels = (np.asarray(part) for part in target)
    if len(inputs) < 2 or len(inputs) != len(labels):
        raise KftError(f"suggest needs at least 2 labelled target examples, got {len(inputs)} "
                       f"inputs and {len(labels)} labels.")
    return inputs[:samples], labels[:samples]


def _preprocessed(model, inputs):
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None or not is_keras_hub_task(model):
        return inputs
    return keras.tree.map_structure(np.asarray, preprocessor(tf.constant(inputs)))


def _rows(inputs, start, stop):
    return keras.tree.map_structure(lambda array: array[start:stop], inputs)


def _gives_probabilities(model, inputs):
    """Whether the outputs are probabilities (kft's heads) or logits (keras-hub's default)."""
    outputs = keras.ops.convert_to_numpy(model(_rows(inputs, 0, 8), training=False))
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=1e-3))


def _fit_head(model, inputs, labels, loss, epochs, batch_size, seed):
    """Fits only the head on the sample, on cached features where that is exact."""
    freezing.freeze(model)
    freezing.unfreeze(model, select="head")
    keras.utils.set_random_seed(seed)
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch_size)
    safe, _ = feature_cache.can_cache(model, allow_random=True)
    fit_model = model
    if safe:
        features, fit_model = feature_cache.split_at_head(model)
        dataset = feature_cache.cache_features(features, dataset, shuffle=True, seed=seed)
    fit_model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    fit_model.fit(dataset, epochs=epochs, shuffle=False, verbose=0)
