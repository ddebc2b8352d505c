"""A seconds-long text recipe: the tiny random BERT on a CSV of labelled sentences.

The `model` param is a keras-hub preset folder (tests write one, see
tests/helpers/text_models.py); `method` is "lora" (adapters and head) or "head".
"""

import kft

recipe = kft.Recipe(
    name="tiny_text",
    params=dict(data="", model="", method="lora", sequence_length=12, batch_size=8, epochs=2,
                lr=0.01, test_split=0.25, balance="", baseline=True, seed=0),
    data=lambda p: kft.data.text.load(p.data, batch_size=p.batch_size, validation_split=0.25,
                                      test_split=p.test_split, seed=p.seed,
                                      balance=p.balance or None),
    model=lambda p, data: _model(p, data),
    stages=lambda p: [kft.Stage(p.method, epochs=p.epochs, lr=p.lr,
                                train="adapters,head" if p.method == "lora" else "head")],
    baseline=lambda p: "linear_probe" if p.baseline else None,
    jit_compile=False,
)


def _model(p, data):
    model = kft.text.text_classifier(p.model, len(data.class_names),
                                     sequence_length=p.sequence_length)
    if p.method == "lora":
        kft.peft.apply_lora(model, rank=2, alpha=4)
    return model
