"""Feature caching: run a frozen backbone once, then train only the head.

When every layer below the head is frozen and nothing random runs there (no
active augmentation, no dropout), the backbone maps each image to the same
features in every epoch. kft computes them once and trains the head on them:
the head model built here shares its layers with the full model, so training
it trains the full model's head, and the full model is ready to save and serve
afterwards.

Example:
```python
ok, reason = kft.training.feature_cache.can_cache(model)
if ok:
    features, head = kft.training.feature_cache.split_at_head(model)
    kft.training.feature_cache.compile_head(head, model)  # the model's optimizer, loss, metrics
    head.fit(kft.training.feature_cache.cache_features(features, train_ds, shuffle=True),
             epochs=10)
```
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

from kft.errors import KftError
from kft.model_tree import HEAD_PREFIX
from kft.model_tree import head_layers
from kft.model_tree import is_keras_hub_task
from kft.model_tree import is_batch_norm
from kft.model_tree import layer_tree


def can_cache(model, allow_random=False):
    """Says whether the backbone's outputs can be cached for `model`.

    Caching is safe when the model is a functional model with a kft head
    (top-level `head_*` layers), every variable below the head is frozen,
    every BatchNormalization layer there is frozen (inference mode), and no
    layer there draws random numbers in training (augmentation, dropout,
    noise).

    Args:
        model: a Keras model in kft's layout.
        allow_random: also say yes when layers below the head draw random
            numbers in training: the features are then computed in inference
            mode (un-augmented images, no dropout), which is not what
            training through them would see.

    Returns:
        `(True, reason)` or `(False, reason)`; the reason is one sentence
        naming the layer that prevents caching.
    """
    try:
        feature_layers = _split_layers(model)[0]
    except KftError as error:
        return False, str(error)
    for node in layer_tree(model).walk():
        if node.parent is None or node.top_level().layer not in feature_layers:
            continue
        layer, path = node.layer, node.path
        if is_batch_norm(layer) and node.is_effectively_trainable():
            return False, (
                f"BatchNormalization layer {path} below the head is trainable and "
                "updates its statistics in training."
            )
        if any(v.trainable for v in node.own_variables) and node.is_effectively_trainable():
            return False, (
                f"layer {path} below the head is trainable; freeze everything below "
                "the head to cache features."
            )
        if _is_random(layer) and not allow_random:
            return False, (
                f"layer {path} ({type(layer).__name__}) below the head draws random "
                "numbers in training (augmentation, dropout or noise); turn it off "
                "to cache features."
            )
    shapes = [tuple(t.shape) for t in _split_tensors(model)[0]]
    return True, (
        "every layer below the head is frozen and deterministic; features of shape "
        f"{', '.join(map(str, shapes))} can be cached."
    )


def split_at_head(model):
    """Splits `model` into a feature model and a head model sharing its layers.

    The feature model runs everything below the head, plus leading head layers
    that hold no weights and draw no random numbers (such as `head_pool`, so
    cached features are small). The head model runs the rest; its layers are
    the full model's own, so training it trains the full model.

    Args:
        model: a functional Keras model with top-level `head_*` layers.

    Returns:
        `(feature_model, head_model)`.

    Raises:
        KftError: the model has no head or is not functional.
    """
    boundary, outputs = _split_tensors(model)
    inputs = boundary[0] if len(boundary) == 1 else boundary
    feature_model = keras.Model(model.inputs, inputs, name=f"{model.name}_features")
    head_model = keras.Model(inputs, outputs, name=f"{model.name}_head")
    return feature_model, head_model


def compile_head(head_model, model):
    """Compiles `head_model` like `model`, sharing `model`'s optimizer.

    Loss, metrics and other compile settings come from `model`; the optimizer
    is the same object, so its state (Adam moments, step count, schedule
    position) carries over between epochs through the full model and epochs
    on cached features.

    Args:
        head_model: the second model from `split_at_head(model)`.
        model: the compiled full model.

    Raises:
        KftError: `model` is not compiled.
    """
    config = model.get_compile_config() if getattr(model, "compiled", False) else None
    if config is None:
        raise KftError(f"model {model.name!r} is not compiled; compile it before its head.")
    config = keras.saving.deserialize_keras_object(config)
    config["optimizer"] = model.optimizer
    head_model.compile(**config)


def cache_features(feature_model, dataset, shuffle=False, seed=None, batch_size=None):
    """Runs `feature_model` once over `dataset` and returns the cached features.

    Args:
        feature_model: the first model from `split_at_head`.
        dataset: a `tf.data.Dataset` (or any iterable) of batches
            `(images, labels)` or `(images, labels, sample_weights)`. It is
            read once; its order is kept.
        shuffle: reshuffle the cached examples every epoch.
        seed: shuffle seed.
        batch_size: batch size of the result; defaults to the size of the
            first input batch, so an unshuffled cache batches exactly like
            the input.

    Returns:
        A `tf.data.Dataset` of `(features, labels[, sample_weights])` batches.

    Raises:
        KftError: the dataset is empty or its batches are not tuples.
    """
    features, rest, extract = [], [], None
    for batch in dataset:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise KftError(
                "cache_features needs batches of (images, labels) or (images, labels, "
                f"sample_weights); got {type(batch).__name__}."
            )
        images, *others = batch
        images = keras.tree.map_structure(tf.convert_to_tensor, images)
        if extract is None:
            extract = _extractor(feature_model, images)
        features.append(keras.tree.map_structure(np.asarray, extract(images)))
        rest.append([np.asarray(o) for o in others])
        if batch_size is None:
            batch_size = len(rest[0][0])
    if not features:
        raise KftError("cache_features got an empty dataset.")
    stacked = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *features)
    columns = [np.concatenate([r[i] for r in rest]) for i in range(len(rest[0]))]
    cached = tf.data.Dataset.from_tensor_slices((stacked, *columns))
    if shuffle:
        cached = cached.shuffle(len(columns[0]), seed=seed, reshuffle_each_iteration=True)
    return cached.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def preprocessed(model, dataset):
    """`dataset` as `model`'s layers take it.

    A keras-hub task applies its preprocessor (tokenizer, packer) to the
    data in `fit`/`predict`, outside its layer graph; the feature model of
    `split_at_head` is part of that graph, so its data must be preprocessed
    first. Other models take the dataset as it is.

    Args:
        model: the full model.
        dataset: batches of `(inputs, labels[, sample_weights])`.
    """
    preprocessor = getattr(model, "preprocessor", None)
    if preprocessor is None or not is_keras_hub_task(model):
        return dataset
    return dataset.map(lambda *batch: preprocessor(*batch), num_parallel_calls=tf.data.AUTOTUNE)


# One traced function per feature model, shared by the training and the
# validation pass; traced once for any batch size (last batches are smaller).
_EXTRACTORS = weakref.WeakKeyDictionary()


def _extractor(feature_model, images):
    spec = keras.tree.map_structure(lambda t: tf.TensorSpec((None, *t.shape[1:]), t.dtype), images)
    key = repr(spec)
    functions = _EXTRACTORS.setdefault(feature_model, {})
    if key not in functions:
        model_ref = weakref.ref(feature_model)  # the cache must not keep the model alive

        @tf.autograph.experimental.do_not_convert
        def extract(x):
            return model_ref()(x, training=False)

        functions[key] = tf.function(extract, input_signature=[spec])
    return functions[key]


def _is_random(layer):
    # Keras layers that draw random numbers own a SeedGenerator (Dropout only
    # when its rate is above zero).
    return bool(getattr(layer, "_seed_generators", None))


def _split_layers(model):
    """Top-level layers below the split point, and the head layers after it."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise KftError(f"model {model.name!r} is not a functional Keras model.")
    head = head_layers(model)
    if not head:
        names = ", ".join(l.name for l in model.layers)
        raise KftError(
            f"model {model.name!r} has no head (top-level layers named {HEAD_PREFIX}*); "
            f"its top-level layers are: {names}."
        )
    head_ids = {id(l) for l in head}
    features = set()
    for node in _nodes_in_order(model):
        layer = node.operation
        parents = [t._keras_history.operation for t in node.input_tensors]
        below = id(layer) not in head_ids
        # Weightless, deterministic head layers fed only by features (the
        # pooling) move into the feature model: the cache gets smaller.
        movable = not layer.weights and not _is_random(layer)
        if below or (movable and all(p in features for p in parents)):
            features.add(layer)
    return features, head


def _split_tensors(model):
    features = _split_layers(model)[0]
    boundary = []
    for node in _nodes_in_order(model):
        if node.operation in features:
            continue
        for tensor in node.input_tensors:
            if tensor._keras_history.operation in features and not any(
                tensor is b for b in boundary
            ):
                boundary.append(tensor)
    if not boundary:
        raise KftError(f"model {model.name!r}: no head layer takes backbone features.")
    for output in model.outputs:
        if output._keras_history.operation in features:
            raise KftError(f"model {model.name!r} has an output that does not pass the head.")
    return boundary, model.outputs


def _nodes_in_order(model):
    depths = sorted(model._nodes_by_depth, reverse=True)
    return [node for depth in depths for node in model._nodes_by_depth[depth]]
