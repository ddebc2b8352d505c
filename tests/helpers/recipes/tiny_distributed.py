"""A recipe for strategy checks: what trains must not depend on the replica count.

The model has no BatchNormalization (each replica would normalise its own
part of the batch) and no dropout (each replica draws its own mask), so a
run on two replicas must equal a run on one. The plan covers what kft adds
to `fit`: a head stage, then a stage with layer-wise rate decay, a warmup
schedule and gradual unfreezing. Setting KFT_TEST_STOP_AT_EPOCH=N raises
`StopAt` when epoch N (global, 0-based) begins, to interrupt a run in-process.
"""

import os

import keras

import kft
from kft.layers.image_preprocessing import ImagePreprocessing
from tests.helpers.tiny_models import random_images


class StopAt(Exception):
    """The interruption KFT_TEST_STOP_AT_EPOCH asks for."""


class _StopAt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == int(os.environ.get("KFT_TEST_STOP_AT_EPOCH", -1)):
            raise StopAt(epoch)


def _model(num_classes, image_size):
    backbone_in = keras.Input((image_size, image_size, 3))
    x = backbone_in
    for block in (1, 2):
        x = keras.layers.Conv2D(4 * block, 3, padding="same", activation="relu",
                                name=f"block{block}_conv")(x)
    backbone = keras.Model(backbone_in, x, name="backbone")
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = backbone(ImagePreprocessing(mode="tf", name="preprocess")(inputs))
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="head_dense")(x)
    return keras.Model(inputs, outputs, name="tiny_distributed")


def _data(p):
    images, labels = random_images(48, p.image_size, seed=p.seed)
    return kft.data.images.from_arrays(images, labels, batch_size=p.batch_size,
                                       validation_split=0.25, seed=p.seed,
                                       class_names=["dark", "mid", "bright"])


recipe = kft.Recipe(
    name="tiny_distributed",
    params=dict(image_size=16, batch_size=8, head_epochs=1, finetune_epochs=2, lr=0.05,
                finetune_lr=0.02, gradual=True, seed=0),
    data=_data,
    model=lambda p, data: _model(len(data.class_names), p.image_size),
    stages=lambda p: [
        kft.Stage("head", epochs=p.head_epochs, train="head", lr=p.lr, optimizer="sgd"),
        kft.Stage("finetune", epochs=p.finetune_epochs, train="head", lr=p.finetune_lr,
                  schedule="cosine", warmup=2, layer_decay=0.5,
                  callbacks=[kft.GradualUnfreezing(every_epochs=1, verbose=0)] if p.gradual else []),
    ],
    callbacks=lambda p: [_StopAt()],
)
