"""A tiny randomly initialised keras-hub BERT preset, for fast text tests.

Real-checkpoint tests use all-MiniLM-L6-v2 (`kft.models.weights.text_presets`);
mechanics (freezing, LoRA, saving, token alignment) are tested on this one,
which loads through the same `from_preset` path in well under a second.
"""

import pathlib

WORDS = (
    "the a an movie film food service phone it this was is were not very really "
    "good great loved excellent bad awful hated terrible boring fine and but "
    "alice bob paris london works in lives at google acme . , ! ? "
    "##s ##ly ##ing ##ed ##er"
).split()
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS


def write_tiny_bert_preset(folder, hidden_dim=16, num_layers=2, seed=0):
    """Writes a keras-hub BERT preset (backbone and tokenizer) to `folder`.

    Returns:
        The folder, as a string, for `from_preset`.
    """
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    folder = pathlib.Path(folder)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCABULARY), num_layers=num_layers, num_heads=2,
        hidden_dim=hidden_dim, intermediate_dim=2 * hidden_dim, max_sequence_length=512,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY, lowercase=True)
    backbone.save_to_preset(str(folder))
    tokenizer.save_to_preset(str(folder))
    return str(folder)
