"""Tiny models in kft's layout, and data they can learn, for fast tests.

`image -> [augment] -> preprocess -> backbone (nested, conv + BatchNorm blocks)
-> head_pool -> head_dropout -> head_dense`, small enough to train in a second;
a tiny keras-hub BERT in the same layout for text.
"""

import keras
import numpy as np

IMAGE_SIZE = 16
NUM_CLASSES = 3


def tiny_backbone(blocks=4, width=4, dropout=0.0, image_size=IMAGE_SIZE):
    """A nested functional backbone: `blocks` x (conv, BatchNorm, ReLU)."""
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for i in range(blocks):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
        if dropout and i == blocks - 2:
            x = keras.layers.Dropout(dropout, name=f"drop{i}")(x)
    return keras.Model(inputs, x, name="backbone")


def tiny_classifier(
    blocks=4, head_dropout=0.0, augment=False, backbone_dropout=0.0, seed=0, name="tiny"
):
    """A kft-layout image classifier over `tiny_backbone`."""
    keras.utils.set_random_seed(seed)
    image = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), dtype="uint8", name="image")
    x = image
    if augment:
        x = keras.Sequential(
            [keras.layers.RandomFlip("horizontal", seed=seed)], name="augment"
        )(x)
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(x)
    x = tiny_backbone(blocks, dropout=backbone_dropout)(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(head_dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="head_dense")(x)
    return keras.Model(image, outputs, name=name)


def tiny_data(n=32, seed=0):
    """Random uint8 images with labels that depend on the image (learnable)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    y = (x[..., 0].mean(axis=(1, 2)) // (256 / NUM_CLASSES)).astype("int32")
    return x, y


def values(model):
    """Every weight of `model` as numpy, keyed by variable path."""
    return {v.path: np.array(v.numpy()) for v in model.weights}


def with_head(backbone, pooled=True):
    """Wraps a backbone (keras.applications or keras-hub) in the kft layout."""
    image = keras.Input(backbone.input_shape[1:], name="image")
    x = keras.layers.Rescaling(1.0, name="preprocess")(image)
    backbone.name = "backbone"
    x = backbone(x)
    if pooled:
        x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(2, name="head_dense")(x)
    return keras.Model(image, outputs)


def tiny_text_classifier(num_layers=3, seed=0):
    """A kft-layout text classifier over a tiny keras-hub BERT backbone."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=50,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=8,
        name="backbone",
    )
    inputs = {name: keras.Input((8,), dtype="int32", name=name) for name in backbone.input}
    pooled = backbone(inputs)["pooled_output"]
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax", name="head_dense")(pooled)
    return keras.Model(inputs, outputs, name="tiny_text")


def tiny_text_data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, 50, size=(n, 8)).astype("int32")
    x = {
        "token_ids": token_ids,
        "segment_ids": np.zeros((n, 8), "int32"),
        "padding_mask": np.ones((n, 8), "int32"),
    }
    return x, (token_ids[:, 0] % NUM_CLASSES).astype("int32")


def tiny_image_model(num_classes=3, image_size=16, name="tiny"):
    """A model with kft's layout: preprocess, a nested conv+BN backbone, head_*."""
    from kft.layers.image_preprocessing import ImagePreprocessing

    backbone_in = keras.Input((image_size, image_size, 3))
    x = backbone_in
    for block in (1, 2):
        x = keras.layers.Conv2D(4 * block, 3, padding="same", name=f"block{block}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{block}_bn")(x)
        x = keras.layers.ReLU(name=f"block{block}_relu")(x)
    backbone = keras.Model(backbone_in, x, name="backbone")

    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = ImagePreprocessing(mode="tf", name="preprocess")(inputs)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="head_dense")(x)
    return keras.Model(inputs, outputs, name=name)


def random_images(count, image_size=16, num_classes=3, seed=0):
    """Images whose mean brightness encodes the class, so they are learnable."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    base = (labels * (200 // max(num_classes - 1, 1)))[:, None, None, None]
    noise = rng.integers(0, 50, size=(count, image_size, image_size, 3))
    return np.clip(base + noise, 0, 255).astype("uint8"), labels.astype("int32")


def trained_quantization_subject(num_classes=3, image_size=16):
    """A tiny image classifier trained a few epochs, with the data to calibrate
    and validate its int8 export on: `(model, (train_x, train_y), (val_x, val_y))`."""
    keras.utils.set_random_seed(0)
    model = tiny_image_model(num_classes, image_size)
    train = random_images(96, image_size, num_classes, seed=0)
    validation = random_images(30, image_size, num_classes, seed=1)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(*train, epochs=4, batch_size=16, verbose=0)
    return model, train, validation
