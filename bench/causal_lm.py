"""LoRA on SmolLM2-135M-Instruct: kft's LoRA against keras-hub's `enable_lora`, and merging.

Two systems train the same causal LM on the same batches in the same
invocation, each in a fresh process of its own (so peak memory and tracing
are that system's alone). Each worker is started and traces its train step
(the warmup steps) alone, one after the other; then their measured steps
take turns, one step each, the order reversed every round (stock kft, kft
stock, ...), the other worker idle meanwhile, so a change in the load of
the machine's (shared) cores hits both alike. Then the kft worker generates
with its trained LoRA model unmerged and merged:

- Model: SmolLM2-135M-Instruct (kft's short name `"smollm2-135m-instruct"`,
  a GGUF read from a PyPI package; `--model` takes another kft name, GGUF
  file or keras-hub preset), `kft.text.causal_lm(..., sequence_length=64)`
  with kft's `InstructionCausalLMPreprocessor` (loss on the answers only)
  and `response_loss()` (mean over answer tokens), for both systems.
- Data: chatterbot-corpus 1.3.3's English `tech_support.yml` (10 distinct
  question/answer pairs once kft drops the exact repeats; `--data` takes
  another instruction file), chat-formatted with SmolLM2's template
  (`kft.data.instructions`), every example padded to the full sequence
  length (the same shapes at every step: nothing traces again), in a seeded
  order (reshuffled every pass over the 10), built the same way in each
  worker and fed to `fit` as one `tf.data` pipeline of `warmup + steps`
  batches. Tokens are real (non-padding) tokens: the sum of each batch's
  `padding_mask`.
- `stock`: keras-hub alone: `model.backbone.enable_lora(rank=8)`: query and
  value of every block, alpha = rank (the update is scaled by 1.0), no
  dropout; Keras treats each `EinsumDense` kernel `(hidden, heads,
  head_dim)` per head (A is `hidden x heads x 8`, B is `8 x head_dim`) and
  every step forms the full kernel `W + A @ B` and einsums the input with it.
- `kft`: `kft.peft.apply_lora(model, rank=8, alpha=16, dropout=0.05)` on
  the backbone's default targets (the same query and value layers); it
  freezes all but the adapters itself (`kft.peft.freeze_base`:
  `kft.freeze(model, "all")`, then `kft.unfreeze(model, Adapters())`). kft
  treats the kernel as one `hidden x (heads * head_dim)` matrix (A is
  `hidden x 8`, B is `8 x heads x head_dim`) and adds
  `scale * dropout(x) A B` to the frozen projection's output.
- Both: `AdamW(2e-4, weight_decay=0.01)`, no metrics, one epoch of
  `warmup + steps` steps of `model.fit`. Only the adapters train in both
  (Llama's projections have no bias).
- Generation (kft worker, after training): the first prompts of the data
  (chat-formatted questions) in one batch, `model.compile(sampler="greedy")`,
  `model.generate(prompts, max_length=72, strip_prompt=True)`. The LoRA
  model unmerged and after `kft.peft.merge(model)` each trace their own
  generate function (one untimed call), then the timed calls alternate
  between the two (merge/unmerge in between), median per model. Tokens/s:
  new tokens (each completion re-tokenized, plus its stop token) per
  second. The merged model must answer as the unmerged one (greedy texts
  equal at every call) and give the same logits on a training batch; the
  report also says what `generate` gives right after `merge` with the
  function traced before it.

A Keras callback (`training_clock` from `bench/text_lora.py`) times every
step from `on_train_batch_begin` to `on_train_batch_end`; the first
`--warmup` steps (the first traces the train function) are left out of the
step figures.

At this size (4 x 64 tokens a step) the step is almost all the frozen
base model (30 blocks and the tied 49,152-word output projection), and the
load of the machine's shared cores moves single steps by 10% and more:
read kft/stock with the min/max of the steps beside it, and lengthen the
run (`--steps`, `--batch-size`) to settle a close call. kft's adapter
dropout is most of what its LoRA costs over keras-hub's (which has none):
`--lora-dropout 0` measures kft without it. Generation is dominated per
token by the output projection, so merging changes little here.

Run: `python bench/causal_lm.py` (about 6-7 minutes on this project's
2-core CPU machine with its cores shared; most of it is fixed cost:
loading the model, about 30 s per worker, tracing the train step, 60-75 s
per system, and tracing two generate functions, 40-50 s each).
Steadier figures: `--steps 20 --batch-size 8 --repeats 4`. Training only:
`--no-generate`. `--json results.json` keeps every figure and every step.
Quick look (its figures mean little): `python bench/causal_lm.py --warmup 1
--steps 2 --batch-size 2 --repeats 1`.

The training table (one column per system, then kft/stock):

- median step (ms): over the measured steps (after the warmup).
- train tokens/s (median step): real tokens per measured step (mean) / the
  median step.
- train tokens/s (all measured steps): their real tokens / their summed
  step times.
- first step, tracing (s): the first step of `fit`, tracing included.
- peak memory, process: `VmHWM` (peak resident set) of the worker over
  loading and training (before generating).
- peak memory, fit: `VmHWM` reset just before `fit` (Linux
  `/proc/self/clear_refs`) and read right after it: the most training held,
  model included.
- memory growth during fit: that peak minus the resident set just before.
- trainable parameters: what the optimizer updates.
- loss, first measured / last step: the same batches in both; the two LoRAs
  differ (scaling, shapes, dropout), so this is a sanity check, not a
  quality comparison.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from text_lora import REPO
from text_lora import conditions
from text_lora import peak_memory_bytes
from text_lora import trainable_parameters
from text_lora import training_clock

SYSTEMS = ("stock", "kft")


@dataclasses.dataclass
class Task:
    """The fine-tuning and generation task; the flags set the fields."""

    model: str = "smollm2-135m-instruct"
    data: str = ""  # chatterbot-corpus tech_support.yml when empty
    sequence_length: int = 64
    batch_size: int = 4
    warmup: int = 1
    steps: int = 6
    seed: int = 0
    lr: float = 2e-4
    weight_decay: float = 0.01
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    generate: bool = True
    prompts: int = 4
    max_length: int = 72
    repeats: int = 2


# ---------------------------------------------------------------- model and data


def data_file(task):
    """The chatterbot-corpus tech-support file (or `--data`)."""
    if task.data:
        return pathlib.Path(task.data)
    from kft.internal import assets

    root = assets.pypi_package("chatterbot-corpus", "1.3.3")
    return root / "chatterbot_corpus" / "data" / "english" / "tech_support.yml"


def build_model(task):
    """The causal LM with kft's instruction preprocessor, padding to the full length."""
    import kft
    from kft.models.instruction_preprocessor import use_instruction_preprocessor

    model = kft.text.causal_lm(task.model, sequence_length=task.sequence_length)
    # pad_to_multiple_of=None: every batch is `sequence_length` long, the same
    # shapes at every step for both systems.
    return use_instruction_preprocessor(model, pad_to_multiple_of=None)


def load_data(task):
    from kft.data import instructions

    path = data_file(task)
    if path.suffix.lower() in (".yml", ".yaml"):
        return instructions.from_chatterbot(path, validation_split=0, test_split=0,
                                            seed=task.seed)
    return instructions.load(path, validation_split=0, test_split=0, seed=task.seed)


def training_arrays(task, model, data):
    """`(x, y, sample_weight)` numpy arrays of `warmup + steps` batches, and tokens per step.

    The examples are chat-formatted (`data.formatted`) and packed by the
    model's `InstructionCausalLMPreprocessor` (loss on the answers): the
    same call `data.batches(model)` maps over its batches, here made once,
    eagerly, on all of them (through `tf.data`, its first batch takes 15-30 s
    on this machine; the arrays are the same). Then they are taken one by
    one in a seeded order, reshuffled every pass over the data, until
    `(warmup + steps) * batch_size` are there.
    """
    import numpy as np

    prompts, responses = data.formatted(model)
    x, y, weights = model.preprocessor({"prompt": prompts, "response": responses})
    x = {key: np.asarray(value) for key, value in x.items()}
    y, weights = np.asarray(y), np.asarray(weights)
    needed = (task.warmup + task.steps) * task.batch_size
    rng = np.random.default_rng(task.seed)
    order = []
    while len(order) < needed:
        order.extend(rng.permutation(len(prompts)).tolist())
    order = np.asarray(order[:needed])
    x = {key: value[order] for key, value in x.items()}
    tokens = x["padding_mask"].astype("int64").reshape(-1, task.batch_size, task.sequence_length)
    return x, y[order], weights[order], tokens.sum(axis=(1, 2)).tolist()


def fit_dataset(task, x, y, weights):
    import tensorflow as tf

    return (tf.data.Dataset.from_tensor_slices((x, y, weights))
            .batch(task.batch_size, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def compile_model(task, model):
    import keras

    from kft.models.instruction_preprocessor import response_loss

    model.compile(optimizer=keras.optimizers.AdamW(task.lr, weight_decay=task.weight_decay),
                  loss=response_loss(), weighted_metrics=None, sampler="greedy")


# ---------------------------------------------------------------- measuring


def reset_peak_memory():
    """Resets `VmHWM` to the current resident set (Linux 4.0+); False if not allowed."""
    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def resident_bytes():
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/self/status has no VmRSS line (not Linux?).")


def loss_log():
    import keras

    class LossLog(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.losses = []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float((logs or {}).get("loss", math.nan)))

    return LossLog()


# ---------------------------------------------------------------- taking turns

# The workers talk to the parent on their stdin and stdout: a line starting
# with MARK is for the parent (libraries may print on stdout too).
MARK = "@@causal_lm "


def say(event, **figures):
    print(MARK + json.dumps({"event": event, **figures}), flush=True)


def command():
    line = sys.stdin.readline()
    if not line:
        raise SystemExit("The parent process went away.")
    return line.strip()


def turns():
    """A Keras callback: before every step, waits for the parent's `go`."""
    import keras

    class Turns(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            say("waiting", step=batch)
            if command() != "go":
                raise SystemExit("Expected 'go' from the parent.")

        def on_train_batch_end(self, batch, logs=None):
            say("stepped", step=batch)

    return Turns()


def train(task, model, system, started):
    """Compiles, fits and returns the step, token and memory figures."""
    data = load_data(task)
    x, y, weights, tokens = training_arrays(task, model, data)
    compile_model(task, model)
    dataset = fit_dataset(task, x, y, weights)
    clock, losses = training_clock(), loss_log()
    before_fit = resident_bytes()
    load_peak = peak_memory_bytes()
    reset = reset_peak_memory()
    # The turns callback goes first: its wait ends before the clock starts
    # a step, and the step is done (TensorFlow runs it synchronously) when
    # it reports back.
    model.fit(dataset, epochs=1, callbacks=[turns(), clock, losses], verbose=0)
    fit_peak = peak_memory_bytes() if reset else None
    steps = clock.epochs[0]["steps"]
    measured = steps[task.warmup:]
    durations = [end - begin for begin, end in measured]
    measured_tokens = tokens[task.warmup:]
    median = statistics.median(durations)
    return data, x, {
        "system": system,
        "examples": data.num_train,
        "step_seconds": [end - begin for begin, end in steps],
        "tokens_per_step": tokens,
        "median_step": median,
        "tokens_per_second": statistics.mean(measured_tokens) / median,
        "tokens_per_second_total": sum(measured_tokens) / sum(durations),
        "first_step": steps[0][1] - steps[0][0],
        "setup_seconds": steps[0][0] - started,
        "losses": losses.losses,
        "resident_before_fit_bytes": before_fit,
        "load_peak_bytes": load_peak,
        "fit_peak_bytes": fit_peak,
        "trainable_parameters": trainable_parameters(model),
        "trainable_variables": len(model.trainable_variables),
        "jit_compile": bool(getattr(model, "jit_compile", False)),
        "padding_share": 1 - sum(tokens) / (len(tokens) * task.batch_size
                                             * task.sequence_length),
    }


def new_tokens(task, model, prompts, outputs):
    """Tokens generated: each completion re-tokenized, plus its stop token if it stopped."""
    tokenizer = model.preprocessor.tokenizer
    total = 0
    for prompt, text in zip(prompts, outputs):
        count = len(tokenizer(text))
        if len(tokenizer(prompt)) + count < task.max_length:
            count += 1
        total += count
    return total


def generate(task, model, prompts):
    """`(texts, seconds)` of one greedy `model.generate` call on the prompts."""
    began = time.perf_counter()
    texts = model.generate(prompts, max_length=task.max_length, strip_prompt=True)
    return list(texts), time.perf_counter() - began


def generation(task, model, data, x):
    """Unmerged vs merged greedy generation, and logits on one training batch.

    Each model traces its own generate function (first call, untimed for
    the figures); then the timed calls alternate between the two (unmerged,
    merged, merged, unmerged, ...: `kft.peft.merge`/`unmerge` in between,
    each with its traced function put back), so a change in the machine's
    load hits both alike.
    """
    import numpy as np

    from kft import peft

    prompts, _ = data.formatted(model)
    prompts = prompts[:task.prompts]
    batch = {key: value[:task.batch_size] for key, value in x.items()}
    unmerged_logits = np.asarray(model(batch, training=False), "float64")
    unmerged_text, unmerged_first = generate(task, model, prompts)
    functions = {"unmerged": model.generate_function}

    peft.merge(model)
    # What a user gets calling `generate` right after `merge`: is keras-hub's
    # generate function, traced before the merge, still in place? (kft's
    # reset_compiled_functions drops the predict/test functions, not it.)
    stale_kept = model.generate_function is functions["unmerged"]
    stale_text, _ = generate(task, model, prompts)
    model.generate_function = None  # traced again, for the merged model
    merged_logits = np.asarray(model(batch, training=False), "float64")
    merged_text, merged_first = generate(task, model, prompts)
    functions["merged"] = model.generate_function

    seconds = {"unmerged": [], "merged": []}
    texts_equal = unmerged_text == merged_text
    state = "merged"
    for repeat in range(task.repeats):
        order = ("unmerged", "merged") if repeat % 2 == 0 else ("merged", "unmerged")
        for name in order:
            if name != state:
                (peft.merge if name == "merged" else peft.unmerge)(model)
                state = name
            model.generate_function = functions[name]
            texts, took = generate(task, model, prompts)
            seconds[name].append(took)
            texts_equal = texts_equal and texts == unmerged_text
    if state != "merged":
        peft.merge(model)
        model.generate_function = functions["merged"]
    tokens = new_tokens(task, model, prompts, merged_text)
    figures = {}
    for name, first in (("unmerged", unmerged_first), ("merged", merged_first)):
        median = statistics.median(seconds[name])
        figures[name] = {"first_call_seconds": first, "seconds": seconds[name],
                         "median_seconds": median, "new_tokens": tokens,
                         "tokens_per_second": tokens / median}
    difference = np.abs(merged_logits - unmerged_logits)
    return {
        "prompts": prompts,
        **figures,
        "unmerged_text": unmerged_text,
        "merged_text": merged_text,
        "texts_equal": texts_equal,
        "unmerged_new_tokens": new_tokens(task, model, prompts, unmerged_text),
        "stale_generate_function_kept": stale_kept,
        "stale_generate_text_equal": stale_text == unmerged_text,
        "stale_generate_text": stale_text,
        "logits_max_abs_difference": float(difference.max()),
        "logits_scale": float(np.abs(unmerged_logits).max()),
        "argmax_agreement": float(np.mean(merged_logits.argmax(-1)
                                          == unmerged_logits.argmax(-1))),
    }


# ---------------------------------------------------------------- the worker


def worker_main(system, task):
    """Runs `system` in this (fresh) process, one step per `go` from the parent.

    Says `waiting` before each step and `stepped` after it, then `trained`
    with its figures; then, on `generate`, the kft system says `generated`
    with the generation figures; `exit` ends it.
    """
    import keras

    import kft  # noqa: F401  (imported before the clock starts)
    from kft import peft

    started = time.perf_counter()
    keras.utils.set_random_seed(task.seed)
    model = build_model(task)
    began = time.perf_counter()
    if system == "stock":
        model.backbone.enable_lora(rank=task.lora_rank)
    else:
        peft.apply_lora(model, rank=task.lora_rank, alpha=task.lora_alpha,
                        dropout=task.lora_dropout)
    lora_seconds = time.perf_counter() - began
    data, x, figures = train(task, model, system, started)
    figures["lora_seconds"] = lora_seconds
    figures["peak_memory_bytes"] = peak_memory_bytes()
    if figures["fit_peak_bytes"] is not None:
        figures["peak_memory_bytes"] = max(figures["load_peak_bytes"],
                                           figures["fit_peak_bytes"])
    figures["worker_seconds"] = time.perf_counter() - started
    say("trained", **figures)
    while (next_command := command()) != "exit":
        if next_command != "generate" or system != "kft":
            raise SystemExit(f"Unexpected command {next_command!r}.")
        say("generated", **generation(task, model, data, x))


class Worker:
    """A system's worker process, driven step by step."""

    def __init__(self, system, task):
        self.system = system
        command_line = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
                        system, "--task", json.dumps(dataclasses.asdict(task))]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.began = time.perf_counter()
        print(f"{system}: starting ...", file=sys.stderr, flush=True)
        self.process = subprocess.Popen(command_line, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        cwd=REPO)

    def expect(self, event):
        """The figures of the next message, which must be `event`."""
        for line in self.process.stdout:
            if line.startswith(MARK):
                message = json.loads(line[len(MARK):])
                if message.pop("event") != event:
                    self.fail(f"expected {event!r}, got {line.strip()[:200]}")
                return message
        self.fail(f"ended while {event!r} was expected")

    def send(self, text):
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def step(self):
        self.expect("waiting")
        self.send("go")
        self.expect("stepped")

    def close(self):
        self.send("exit")
        self.process.stdin.close()
        if self.process.wait() != 0:
            self.fail(f"exit status {self.process.returncode}")
        self.log.close()
        print(f"{self.system}: done after {time.perf_counter() - self.began:.0f} s",
              file=sys.stderr, flush=True)

    def fail(self, why):
        self.process.kill()
        self.process.wait()
        self.log.seek(0)
        print(self.log.read()[-4000:], file=sys.stderr)
        raise SystemExit(f"{self.system}: the worker failed ({why}).")


def run_systems(task, systems):
    """Trains every system in its own process, their measured steps taking turns.

    Each worker is started, and traces its train step in its warmup steps,
    alone, one after the other. Then the measured steps alternate: one
    step of each, the order reversed every round (A B, B A, A B, ...), so
    a change in the machine's load (shared cores) hits all systems alike.
    The kft worker generates last, after the others have exited.
    """
    workers = {}
    for system in systems:
        worker = workers[system] = Worker(system, task)
        for _ in range(task.warmup):
            worker.step()
        print(f"{system}: warm after {time.perf_counter() - worker.began:.0f} s",
              file=sys.stderr, flush=True)
    for round_ in range(task.steps):
        for system in systems if round_ % 2 == 0 else systems[::-1]:
            workers[system].step()
    results = {system: worker.expect("trained") for system, worker in workers.items()}
    for system, worker in workers.items():
        if system != "kft":
            worker.close()
    if "kft" in workers and task.generate:
        print("kft: generating ...", file=sys.stderr, flush=True)
        workers["kft"].send("generate")
        results["kft"]["generation"] = workers["kft"].expect("generated")
    if "kft" in workers:
        workers["kft"].close()
    return results


# ---------------------------------------------------------------- the report


def _gib(value):
    return math.nan if value is None else value / 2**30


ROWS = [
    # (label, figure(result) -> number, format, higher is better)
    ("median step (ms)", lambda r: r["median_step"] * 1000, "{:.0f}"),
    ("train tokens/s (median step)", lambda r: r["tokens_per_second"], "{:.1f}"),
    ("train tokens/s (all measured steps)", lambda r: r["tokens_per_second_total"], "{:.1f}"),
    ("first step, tracing (s)", lambda r: r["first_step"], "{:.1f}"),
    ("peak memory, process (GiB)", lambda r: _gib(r["peak_memory_bytes"]), "{:.2f}"),
    ("peak memory, fit (GiB)", lambda r: _gib(r["fit_peak_bytes"]), "{:.2f}"),
    ("memory growth during fit (GiB)",
     lambda r: _gib(None if r["fit_peak_bytes"] is None
                    else r["fit_peak_bytes"] - r["resident_before_fit_bytes"]), "{:.2f}"),
    ("trainable parameters", lambda r: r["trainable_parameters"], "{:,}"),
    ("loss, first measured step", lambda r: r["losses"][r["warmup"]], "{:.3f}"),
    ("loss, last step", lambda r: r["losses"][-1], "{:.3f}"),
]


def training_table(results):
    systems = list(results)
    ratio = "stock" in results and "kft" in results
    header = ["", *systems] + (["kft/stock"] if ratio else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, figure, fmt in ROWS:
        cells = [label, *(fmt.format(figure(results[s])) for s in systems)]
        if ratio:
            stock, kft = figure(results["stock"]), figure(results["kft"])
            cells.append(f"{kft / stock:.2f}" if stock and not math.isnan(stock) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def generation_lines(g):
    lines = ["| generation (kft LoRA, greedy) | unmerged | merged | merged/unmerged |",
             "|---|---|---|---|"]
    u, m = g["unmerged"], g["merged"]
    lines.append(f"| tokens/s | {u['tokens_per_second']:.1f} | {m['tokens_per_second']:.1f} "
                 f"| {m['tokens_per_second'] / u['tokens_per_second']:.2f} |")
    lines.append(f"| seconds per call (median) | {u['median_seconds']:.2f} | "
                 f"{m['median_seconds']:.2f} | "
                 f"{m['median_seconds'] / u['median_seconds']:.2f} |")
    lines.append(f"| new tokens per call | {g['unmerged_new_tokens']} | {m['new_tokens']} | - |")
    lines.append(f"| first call, tracing (s) | {u['first_call_seconds']:.1f} | "
                 f"{m['first_call_seconds']:.1f} | "
                 f"{m['first_call_seconds'] / u['first_call_seconds']:.2f} |")
    lines.append("")
    lines.append(
        f"- Merged = unmerged: greedy texts {'identical' if g['texts_equal'] else 'DIFFER'} "
        f"({len(g['prompts'])} prompts, every call); logits on a training batch: max |difference| "
        f"{g['logits_max_abs_difference']:.2e} (largest |logit| {g['logits_scale']:.1f}), "
        f"argmax agreement {g['argmax_agreement']:.4f}.")
    if g["stale_generate_function_kept"]:
        effect = ("its greedy texts still equal the unmerged ones here"
                  if g["stale_generate_text_equal"] else
                  "its greedy texts DIFFER from the unmerged model's")
        lines.append(
            "- `generate` right after `kft.peft.merge` (no recompile) still runs the generate "
            "function traced before the merge, which adds the adapter on top of the merged "
            f"kernel (the update counted twice): {effect}. This benchmark sets "
            "`model.generate_function = None` after merging.")
    else:
        lines.append("- `kft.peft.merge` drops the traced generate function: `generate` "
                     "right after it traces the merged model.")
    for prompt, text in zip(g["prompts"][:2], g["merged_text"][:2]):
        question = prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>")[0]
        lines.append(f"- {question!r} -> {text!r}")
    return lines


def report(task, results, where):
    for r in results.values():
        r["warmup"] = task.warmup
    lines = training_table(results)
    lines.append("")
    for system, r in results.items():
        lines.append(
            f"- {system}: median step {r['median_step'] * 1000:.0f} ms over {task.steps} "
            f"measured steps (min {min(r['step_seconds'][task.warmup:]) * 1000:.0f}, max "
            f"{max(r['step_seconds'][task.warmup:]) * 1000:.0f}); setup before the first "
            f"step {r['setup_seconds']:.1f} s (LoRA {r['lora_seconds']:.1f} s); "
            f"{r['trainable_variables']} trainable "
            f"variables; jit_compile {r['jit_compile']}.")
    if "kft" in results and "stock" in results:
        kft, stock = results["kft"], results["stock"]
        verdict = kft["median_step"] <= stock["median_step"]
        fastest = [min(r["step_seconds"][task.warmup:]) * 1000 for r in (kft, stock)]
        lines.append(f"- kft's step no slower than keras-hub's (median): "
                     f"{'yes' if verdict else 'NO'} (fastest steps: kft {fastest[0]:.0f} ms, "
                     f"keras-hub {fastest[1]:.0f} ms).")
    if "generation" in results.get("kft", {}):
        lines.append("")
        lines.extend(generation_lines(results["kft"]["generation"]))
    first = next(iter(results.values()))
    lines.append("")
    lines.append("| conditions | |")
    lines.append("|---|---|")
    versions = ", ".join(f"{k} {v}" for k, v in where["versions"].items())
    data_line = (f"{data_file(task).name}: {first['examples']} distinct pairs, "
                 f"{first['padding_share']:.0%} of the positions padding")
    lora = (f"rank {task.lora_rank} on query and value; kft alpha {task.lora_alpha:g}, "
            f"dropout {task.lora_dropout:g}; keras-hub alpha = rank, no dropout")
    optimizer = (f"AdamW {task.lr:g}, weight decay {task.weight_decay:g}; "
                 "loss on the answers (response_loss)")
    generating = (f"{task.prompts} prompts in one batch, greedy, max_length {task.max_length}; "
                  f"one untimed call each (tracing), then {task.repeats} timed calls each, "
                  "alternating, median") if task.generate else "not run"
    machine = (f"{where['cpus_usable']} of {where['cpus']} CPUs ({where['cpu_model']}), "
               f"load average at start {where['load_average'][0]}")
    for label, value in [
        ("model", task.model),
        ("data", data_line),
        ("batch x sequence length",
         f"{task.batch_size} x {task.sequence_length} (padded to full length)"),
        ("steps", f"{task.warmup} warmup + {task.steps} measured, 1 epoch"),
        ("LoRA", lora),
        ("optimizer", optimizer),
        ("generation", generating),
        ("machine", machine),
        ("software", f"Python {where['python']}, {versions}"),
        ("when, commit", f"{where['date']}, kft {where['kft_commit']}"),
    ]:
        lines.append(f"| {label} | {value} |")
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = Task()
    parser.add_argument("--systems", default="stock,kft",
                        help=f"comma-separated, in order, from {', '.join(SYSTEMS)}")
    parser.add_argument("--model", default=d.model,
                        help="kft short name, GGUF file, preset folder or keras-hub preset")
    parser.add_argument("--data", default=d.data,
                        help="instruction data file (default: chatterbot tech_support.yml)")
    parser.add_argument("--sequence-length", type=int, default=d.sequence_length)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--warmup", type=int, default=d.warmup,
                        help="steps left out of the step figures (the first traces)")
    parser.add_argument("--steps", type=int, default=d.steps, help="measured steps")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--lora-dropout", type=float, default=d.lora_dropout,
                        help="kft's adapter dropout (keras-hub's LoRA has none)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--prompts", type=int, default=d.prompts)
    parser.add_argument("--max-length", type=int, default=d.max_length)
    parser.add_argument("--repeats", type=int, default=d.repeats,
                        help="timed generate calls per model (median)")
    parser.add_argument("--no-generate", action="store_true",
                        help="skip the merged vs unmerged generation")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = [s for s in args.systems.split(",") if s not in SYSTEMS]
    if unknown:
        parser.error(f"unknown system {', '.join(unknown)}; use some of {', '.join(SYSTEMS)}")
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, Task(**json.loads(args.task)))
        return
    task = Task(model=args.model, data=args.data, sequence_length=args.sequence_length,
                batch_size=args.batch_size, warmup=args.warmup, steps=args.steps, lr=args.lr,
                lora_dropout=args.lora_dropout,
                seed=args.seed, generate=not args.no_generate, prompts=args.prompts,
                max_length=args.max_length, repeats=args.repeats)
    where = conditions()
    results = run_systems(task, args.systems.split(","))
    print(report(task, results, where))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"task": dataclasses.asdict(task), "conditions": where, "results": results},
            indent=2) + "\n")


if __name__ == "__main__":
    main()
