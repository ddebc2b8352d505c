"""Sentiment of review sentences: all-MiniLM-L6-v2 fine-tuned with LoRA.

The data is the UCI Sentiment Labelled Sentences (3,000 Amazon, IMDb and Yelp
review sentences, CC BY 4.0) and the model all-MiniLM-L6-v2 (BERT, 22.7M
parameters); both come through package registries, no hub needed. Before
fine-tuning, the run reports the linear-probe baseline (the pretrained
encoder frozen, a new head trained on its features).

    kft run recipes/sentiment.py                               # LoRA r=8 on query and value
    kft run recipes/sentiment.py --set method=layer_decay      # full fine-tuning, layer-wise LR decay
    kft run recipes/sentiment.py --data reviews.csv --set label_column=stars
    kft run recipes/sentiment.py --set model=bert_base_en_uncased   # any keras-hub preset (online)
"""

import kft

_DEFAULT_DATA = "uci-sentences"


def data(p):
    options = dict(batch_size=p.batch_size, validation_split=p.validation_split,
                   test_split=p.test_split, seed=p.seed, balance=p.balance or None)
    if p.data == _DEFAULT_DATA:
        return kft.data.datasets.sentiment_sentences.text_data(limit=p.limit or None, **options)
    return kft.data.text.load(p.data, text_column=p.text_column,
                              label_column=p.label_column, **options)


def model(p, data):
    classifier = kft.text.text_classifier(
        p.model, num_classes=len(data.class_names), sequence_length=p.sequence_length,
        dropout=p.dropout,
    )
    if p.method == "lora":
        # Query and value projections of every attention block, PEFT's default.
        kft.peft.apply_lora(classifier, rank=p.lora_rank, alpha=p.lora_alpha,
                            dropout=p.lora_dropout)
    return classifier


def stages(p):
    if p.method == "lora":
        return [kft.Stage("lora", epochs=p.epochs, train="adapters,head", lr=p.lr,
                          optimizer="adamw", weight_decay=p.weight_decay,
                          schedule="linear", warmup=p.warmup)]
    if p.method == "layer_decay":
        return [kft.Stage("finetune", epochs=p.epochs, train="all", lr=p.finetune_lr,
                          optimizer="adamw", weight_decay=p.weight_decay,
                          layer_decay=p.layer_decay, schedule="linear", warmup=p.warmup)]
    raise kft.KftError(f"method must be 'lora' or 'layer_decay', got {p.method!r}.")


recipe = kft.Recipe(
    name="sentiment",
    params=dict(
        # "uci-sentences", a CSV/TSV/JSON Lines file, or tfds:NAME.
        data=_DEFAULT_DATA,
        text_column="text",
        label_column="label",
        # kft short name, keras-hub preset or checkpoint folder.
        model="minilm",
        # 98.5% of the UCI sentences fit in 48 tokens.
        sequence_length=48,
        batch_size=32,
        validation_split=0.1,
        test_split=0.2,
        # "", "class_weight" or "oversample".
        balance="",
        # Use only this many sentences (0: all), for a quick look.
        limit=0,
        method="lora",
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lr=2e-3,
        finetune_lr=5e-5,
        layer_decay=0.8,
        weight_decay=0.01,
        warmup=0.1,
        dropout=0.1,
        epochs=2,
        # Report the frozen-encoder linear probe next to the result.
        baseline=True,
        seed=0,
    ),
    data=data,
    model=model,
    stages=stages,
    baseline=lambda p: "linear_probe" if p.baseline else None,
    # XLA compiles MiniLM's train step for longer than an epoch runs on CPU.
    jit_compile=False,
    # kft tune recipes/sentiment.py --trials 8 --set baseline=false
    search={
        "lr": kft.tuning.LogUniform(5e-4, 5e-3),
        "lora_rank": kft.tuning.Choice(4, 8, 16),
        "warmup": kft.tuning.Uniform(0.0, 0.2, step=0.05),
        "epochs": kft.tuning.Budget(),
    },
)
