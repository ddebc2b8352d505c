"""GPT-2 adapted to a domain's text: Hugging Face's classic `run_clm` example, the kft way.

The corpus is a plain text file, one document per paragraph (blank lines
between them); kft cuts each document into `sequence_length`-token chunks
(every token a label once, no chunk across two documents) and holds whole
documents out for validation and test. The run reports held-out perplexity
before and after. Like `run_clm` it fine-tunes every weight by default
(AdamW, linear decay); `--set method=lora` trains LoRA adapters instead.

    kft run recipes/gpt2_domain.py --data corpus.txt                  # gpt2_base_en (online)
    kft run recipes/gpt2_domain.py --data corpus.txt --set model=path/to/gpt2_folder
    kft run recipes/gpt2_domain.py --data corpus.txt --set method=lora --set lr=1e-3
    kft run recipes/gpt2_domain.py --data corpus.txt --set forgetting=general.txt
        # perplexity on general text before and after: what the domain cost
    kft generate runs/gpt2_domain-... "The patient was"
"""

import kft


def data(p):
    if not p.data:
        raise kft.KftError("Pass the corpus: kft run recipes/gpt2_domain.py --data corpus.txt "
                           "(a .txt file, documents separated by blank lines).")
    return kft.data.instructions.load(p.data, validation_split=p.validation_split,
                                      test_split=p.test_split, seed=p.seed,
                                      batch_size=p.batch_size)


def forgetting(p):
    """General text the run must not forget (a .txt file), scored before and after."""
    if not p.forgetting:
        return None
    return kft.data.instructions.load(p.forgetting, validation_split=0, test_split=0,
                                      batch_size=p.batch_size)


def model(p, data):
    lm = kft.text.causal_lm(p.model, sequence_length=p.sequence_length)
    if p.method == "lora":
        kft.peft.apply_lora(lm, rank=p.lora_rank, alpha=p.lora_alpha, dropout=0.05)
    return lm


def stages(p):
    if p.method not in ("full", "lora"):
        raise kft.KftError(f"method must be 'full' or 'lora', got {p.method!r}.")
    return [kft.Stage("finetune" if p.method == "full" else "lora", epochs=p.epochs,
                      train="all" if p.method == "full" else "adapters", lr=p.lr,
                      optimizer="adamw", weight_decay=p.weight_decay, schedule="linear",
                      warmup=p.warmup)]


recipe = kft.Recipe(
    name="gpt2_domain",
    params=dict(
        # A .txt corpus (required).
        data="",
        # A keras-hub preset (gpt2_base_en, gpt2_medium_en: online), a preset or
        # Hugging Face folder, or a GGUF file.
        model="gpt2_base_en",
        # run_clm's block_size is 1024; 256 keeps a CPU step affordable.
        sequence_length=256,
        batch_size=4,
        validation_split=0.1,
        test_split=0.1,
        method="full",
        # run_clm's defaults: 5e-5, linear decay, no warmup, 3 epochs.
        lr=5e-5,
        weight_decay=0.0,
        warmup=0.0,
        epochs=3,
        lora_rank=8,
        lora_alpha=16,
        # A .txt file of general text: its perplexity before and after (forgetting).
        forgetting="",
        seed=0,
    ),
    data=data,
    forgetting=forgetting,
    model=model,
    stages=stages,
    monitor="val_loss",
    jit_compile=False,
)
