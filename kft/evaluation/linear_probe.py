"""The linear-probe baseline: the pretrained encoder frozen, only a new head trained.

Fine-tuning is worth its cost only if it beats this. The probe runs the
model's layers below the head once over the data in inference mode
(`kft.training.feature_cache`), trains a freshly initialised copy of the head on those
features, and reports on the held-out sets. The model itself is not changed.
"""

import keras

from kft.training import feature_cache
from kft.errors import KftError
from kft.evaluation.classification import evaluate


def linear_probe(model, data, loss="sparse_categorical_crossentropy", epochs=100,
                 learning_rate=1e-2, batch_size=256, patience=5, seed=0, new_head=False):
    """Trains a new head on frozen features of `model` and reports its metrics.

    Call it before fine-tuning, on the pretrained model; or with
    `new_head=True` on another labelled set, to ask how well the model's
    features still separate that set's classes (`kft.evaluation.forgetting`).

    Args:
        model: a classifier with a head (`kft.vision.image_classifier`,
            `kft.text.text_classifier`, a keras-hub classifier, or any
            functional model with top-level `head_*` layers).
        data: a `kft.data` object with `train`, `validation` (and `test`)
            batches and `class_names`.
        loss: the loss that matches the head's output.
        epochs: most epochs over the cached features; training stops early
            when the validation loss has not improved for `patience` epochs
            and keeps the best weights.
        learning_rate: Adam's learning rate for the head.
        batch_size: feature batch size.
        patience: early-stopping patience in epochs.
        seed: seeds the head's initialisation and the shuffling.
        new_head: train one softmax layer for `data`'s classes on the
            features instead of a fresh copy of the model's head (whose
            output size is the model's classes).

    Returns:
        A dict `{"validation": ClassificationReport, "test": ...}` with the
        sets `data` holds.

    Example:
    ```python
    data = kft.data.datasets.sentiment_sentences.text_data()
    model = kft.text.text_classifier("minilm", 2, sequence_length=48)
    kft.evaluation.linear_probe(model, data)["test"].accuracy  # 0.8 or so
    ```
    """
    held_out = {name: getattr(data, name, None) for name in ("validation", "test")}
    held_out = {name: dataset for name, dataset in held_out.items() if dataset is not None}
    if not held_out:
        raise KftError("The linear probe needs validation or test data to report on.")
    features, head = feature_cache.split_at_head(model)

    def cached(dataset, shuffle=False):
        return feature_cache.cache_features(
            features, feature_cache.preprocessed(model, dataset), shuffle=shuffle, seed=seed,
            batch_size=batch_size)

    train = cached(data.train, shuffle=True)
    held_features = {name: cached(dataset) for name, dataset in held_out.items()}
    if new_head:
        # Seeded by its initializer: the global random state (a run's dropout and
        # augmentation streams) is left as it was, so measuring changes no result.
        probe = _softmax_layer(features, data, seed)
    else:
        keras.utils.set_random_seed(seed)
        # clone_model builds new layers from the head's configs: fresh weights.
        probe = keras.models.clone_model(head)
        # The clone copies the frozen flags of a model prepared for fine-tuning.
        for layer in probe.layers:
            layer.trainable = True
    probe.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    monitor = held_features.get("validation")
    callbacks = []
    if monitor is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True))
    probe.fit(train, validation_data=monitor, epochs=epochs, callbacks=callbacks, shuffle=False,
              verbose=0)

    multi_label = bool(getattr(data, "multi_label", False))
    return {
        name: evaluate(probe, dataset, data.class_names, multi_label)
        for name, dataset in held_features.items()
    }


def _softmax_layer(features, data, seed):
    """A logistic regression on the features: one Dense layer over `data`'s classes
    (sigmoid for multi-label data), features of any rank averaged to vectors."""
    inputs = [keras.Input(tuple(tensor.shape[1:]), dtype=tensor.dtype)
              for tensor in keras.tree.flatten(features.outputs)]
    if len(inputs) != 1:
        raise KftError(f"The layers below {features.name!r}'s head give {len(inputs)} "
                       "tensors; a linear probe reads one.")
    vectors = inputs[0]
    if len(vectors.shape) > 2:
        vectors = keras.layers.GlobalAveragePooling1D()(
            keras.layers.Reshape((-1, vectors.shape[-1]))(vectors))
    multi_label = bool(getattr(data, "multi_label", False))
    outputs = keras.layers.Dense(len(data.class_names),
                                 activation="sigmoid" if multi_label else "softmax",
                                 kernel_initializer=keras.initializers.GlorotUniform(seed),
                                 dtype="float32", name="probe")(vectors)
    return keras.Model(inputs[0], outputs, name="linear_probe")
