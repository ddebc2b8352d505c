"""A causal-LM recipe on a tiny model (a GGUF file given as `model`) for fast run tests."""

import kft


def data(p):
    return kft.data.instructions.load(p.data, validation_split=0.2, test_split=0.2, seed=p.seed,
                                      batch_size=p.batch_size)


def model(p, data):
    lm = kft.text.causal_lm(p.model, sequence_length=p.sequence_length)
    if p.method == "lora":
        kft.peft.apply_lora(lm, rank=4, alpha=8)
    return lm


def stages(p):
    train = "adapters" if p.method == "lora" else "all"
    return [kft.Stage("tune", epochs=p.epochs, train=train, lr=p.lr)]


recipe = kft.Recipe(
    name="tiny_causal_lm",
    params=dict(data="", model="", sequence_length=32, batch_size=4, method="lora", epochs=2,
                lr=0.01, max_tokens=8, seed=0),
    data=data,
    model=model,
    stages=stages,
    monitor="val_loss",
    generation=lambda p: {"max_tokens": p.max_tokens, "prompts": 4},
)
