"""Small keras-hub and image models for the PEFT, saving and export tests."""

import keras
import numpy as np

from kft import peft


BERT_LAYERS = [
    f"bert/transformer_layer_{i}/self_attention_layer/{name}"
    for i in (0, 1) for name in ("query", "value")
]


def tiny_bert(name="bert", seed=0):
    """A 2-layer, hidden-32 keras-hub BERT classifier with random weights."""
    import keras_hub

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=32, name=name,
    )
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, preprocessor=None, num_classes=2, name=f"{name}_classifier"
    )


def token_batch(count=16, length=8, seed=0):
    rng = np.random.default_rng(seed)
    features = {
        "token_ids": rng.integers(1, 100, size=(count, length)).astype("int32"),
        "segment_ids": np.zeros((count, length), "int32"),
        "padding_mask": np.ones((count, length), "int32"),
    }
    return features, (np.arange(count) % 2).astype("int32")


def compile_for_logits(model, rate=0.02, graph=False):
    """Eager by default: tracing BERT's train step costs more than a few tiny steps."""
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=not graph,
        jit_compile=False,
    )


def snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.weights}


def changed(model, before):
    return {v.path for v in model.weights if not np.array_equal(v.numpy(), before[v.path])}


def randomize_adapters(model, name="default", seed=1):
    rng = np.random.default_rng(seed)
    for _, layer in peft.lora_layers(model):
        if name in layer.adapter_names:
            b = layer.adapter_variables(name)["lora_b"]
            b.assign(rng.normal(scale=0.2, size=b.shape))


def image_head_model():
    """kft's vision layout in miniature: nested backbone with BN, head_* layers."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    top = keras.Input((8, 8, 3))
    x = backbone(top)
    x = keras.layers.Dense(6, activation="relu", name="head_hidden")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head_dense")(x)
    return keras.Model(top, outputs, name="vision")
