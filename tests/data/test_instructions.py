"""kft.data.instructions: pairs, chats, text and chatterbot YAML become checked, split examples."""

import json

import keras
import numpy as np
import pytest

import kft
from kft.data import instructions
from kft.errors import KftError
from kft.internal import assets
from kft.models.instruction_preprocessor import response_loss
from kft.models.instruction_preprocessor import use_instruction_preprocessor
from tests.helpers.gguf_files import tiny_llama_backbone
from tests.helpers.gguf_files import write_llama_gguf

PAIRS = [(f"Question {i}?", f"Answer {i}.") for i in range(20)]


def _jsonl(path, records):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


def _chat(*turns):
    roles = ["user", "assistant"] * len(turns)
    return {"messages": [{"role": r, "content": t} for r, t in zip(roles, turns)]}


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory):
    return write_llama_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", tiny_llama_backbone())


@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv"])
def test_every_pair_format_reads_the_same_examples(tmp_path, kind):
    path = tmp_path / f"pairs.{kind}"
    if kind == "jsonl":
        _jsonl(path, [{"q": p, "a": r} for p, r in PAIRS])
    else:
        separator = "\t" if kind == "tsv" else ","
        path.write_text(f"q{separator}a\n" + "".join(f"{p}{separator}{r}\n" for p, r in PAIRS))
    data = instructions.load(path, prompt_column="q", response_column="a", validation_split=0,
                             test_split=0)
    assert data.kind == "pairs"
    assert [(e.prompt, e.response) for e in data.train] == PAIRS
    assert data.train[3].where == f"{path}, line {4 if kind == 'jsonl' else 5}"


def test_the_split_is_seeded_and_keeps_each_prompt_on_one_side(tmp_path):
    # Every prompt has two answers, and each pair is in the file twice.
    records = [{"prompt": p, "response": r + suffix} for p, r in PAIRS for suffix in ("", "!")]
    path = _jsonl(tmp_path / "pairs.jsonl", records * 2)
    data = instructions.load(path, validation_split=0.1, test_split=0.2, seed=3)
    assert data.duplicates == 40
    assert (data.num_train, data.num_validation, data.num_test) == (28, 4, 8)
    sides = [{e.prompt for e in part} for part in (data.train, data.validation, data.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    again = instructions.load(path, validation_split=0.1, test_split=0.2, seed=3)
    assert again.test == data.test
    other = instructions.load(path, validation_split=0.1, test_split=0.2, seed=4)
    assert other.test != data.test
    assert instructions.load(path, deduplicate=False, validation_split=0,
                             test_split=0).num_train == 80
    with pytest.raises(KftError, match="holds out none"):
        instructions.load(path, validation_split=0.01)
    held = _jsonl(tmp_path / "test.jsonl", [{"prompt": "Held?", "response": "Out."}])
    data = instructions.load(path, test=held, validation_split=0)
    assert [e.prompt for e in data.test] == ["Held?"] and data.num_train == 40


def test_chats_end_with_the_assistant_turn_and_format_with_the_template(tmp_path,
                                                                         tiny_model_path):
    path = _jsonl(tmp_path / "chats.jsonl", [
        _chat("Hi", "Hello!", "Capital of France?", "Paris."),
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "2+2"}, {"role": "assistant", "content": 4}]},
    ])
    data = instructions.load(path, validation_split=0, test_split=0)
    assert data.kind == "chat" and data.num_train == 2
    model = kft.text.causal_lm(tiny_model_path)
    prompts, responses = data.formatted(model)
    # The tiny model's template (tests/helpers/gguf_files.py) has no generation prompt.
    assert prompts[0] == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>"
                          "\n<|im_start|>user\nCapital of France?<|im_end|>\n")
    assert responses[0] == "<|im_start|>assistant\nParis.<|im_end|>"
    assert responses[1] == "<|im_start|>assistant\n4<|im_end|>"
    with pytest.raises(KftError, match="chat_format=True"):
        data.formatted(model, chat_format=False)


@pytest.mark.parametrize("lines, column_options, message", [
    (['{"prompt": "Hi", "response": "Hello"}', '{"prompt": "", "response": "x"}'], {},
     "line 2: the prompt is empty"),
    (['{"prompt": "Hi", "response": "Hello"}', '', '{"prompt": "Hi", "response": "  "}'], {},
     "line 3: the response is empty"),
    (['{"prompt": "Hi", "response": "Hello"}', '{"prompt": "Hi", "response": "Hello"'], {},
     "line 2 is not valid JSON"),
    (['{"question": "Hi", "answer": "Hello"}'], {}, "line 1 has no 'prompt' field; it has "
     "'question', 'answer'"),
    (['{"q": "Hi", "a": ["Hello"]}'], {"prompt_column": "q", "response_column": "a"},
     "line 1: the response is a list, not text"),
    (['{"prompt": "Hi", "response": "Hello"}', json.dumps(_chat("Hi", "Hello"))], {},
     "line 2 holds a 'messages' list, but line 1 held a prompt/response pair"),
    ([json.dumps({"messages": [{"role": "user", "content": "Hi"}]})], {},
     "line 1: the last message is the user's; a training chat ends with the assistant's"),
    ([json.dumps({"messages": [{"role": "bot", "content": "Hi"}]})], {},
     "line 1, message 1: role 'bot' is not one of system, user, assistant"),
    ([json.dumps({"messages": [{"role": "system", "content": "S"},
                               {"role": "assistant", "content": "A"}]})], {},
     "line 1: no user message comes before"),
    ([json.dumps({"messages": []})], {}, "line 1: 'messages' must be a non-empty list"),
    (['[1, 2]'], {}, "line 1 is not a JSON object"),
])
def test_bad_jsonl_lines_name_the_file_and_line(tmp_path, lines, column_options, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(KftError, match=str(path) + ".*") as error:
        instructions.load(path, **column_options)
    assert message in str(error.value)


def test_bad_csv_files_and_paths_are_kft_errors(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,answer\nHi,Hello\n")
    with pytest.raises(KftError, match=r"line 1 \(header\) has no column 'response'"):
        instructions.load(path)
    path.write_text("prompt,response\nHi,Hello\nHow are you?,\n")
    with pytest.raises(KftError, match="pairs.csv, line 3: the response is empty"):
        instructions.load(path)
    path.write_text("prompt,response\n")
    with pytest.raises(KftError, match="holds no examples"):
        instructions.load(path)
    with pytest.raises(KftError, match="is not .jsonl, .csv"):
        instructions.load(tmp_path / "pairs.parquet")
    with pytest.raises(KftError, match="does not exist"):
        instructions.load(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(KftError, match="not UTF-8"):
        instructions.load(tmp_path / "latin1.txt")


def test_text_files_are_paragraphs_cut_into_chunks_within_each_document(tmp_path,
                                                                         tiny_model_path):
    paragraphs = ["the cat sat on the mat " * 5, "Hello world", "the mat " * 3]
    path = tmp_path / "domain.txt"
    path.write_text("\n\n".join(paragraphs) + "\n")
    data = instructions.load(path, validation_split=0, test_split=0)
    assert data.kind == "text"
    assert [e.where for e in data.train] == [f"{path}, line {n}" for n in (1, 3, 5)]
    model = use_instruction_preprocessor(kft.text.causal_lm(tiny_model_path, sequence_length=8))
    batches = list(data.batches(model, batch_size=64, shuffle=False))
    (x, y, weights), = batches
    tokenizer = model.preprocessor.tokenizer
    documents = [[int(i) for i in tokenizer(p.strip())] + [tokenizer.end_token_id]
                 for p in paragraphs]
    # Every token but each document's first is a label exactly once, with its document.
    labels = np.asarray(y)[np.asarray(weights) > 0]
    assert sorted(labels.tolist()) == sorted(t for d in documents for t in d[1:])
    assert len(labels) == sum(len(d) - 1 for d in documents)
    assert x["token_ids"].shape[1] == 8
    rows = -(-np.array([len(d) - 1 for d in documents]) // 8)
    assert len(labels) and x["token_ids"].shape[0] == rows.sum()
    with pytest.raises(KftError, match="documents, not prompts"):
        data.formatted(model)


def test_pair_batches_fit_a_tiny_llama_on_the_responses(tmp_path, tiny_model_path):
    path = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": p, "response": r} for p, r in PAIRS[:10]])
    data = instructions.load(path, validation_split=0.2, test_split=0)
    model = use_instruction_preprocessor(kft.text.causal_lm(tiny_model_path, sequence_length=32))
    train = data.batches(model, batch_size=2, seed=1)
    first = [np.asarray(x["token_ids"]).tolist() for x, _, _ in train]
    second = [np.asarray(x["token_ids"]).tolist() for x, _, _ in train]
    assert first != second  # A new order every epoch ...
    assert first == [np.asarray(x["token_ids"]).tolist()
                     for x, _, _ in data.batches(model, batch_size=2, seed=1)]  # ... seeded.
    validation = data.batches(model, batch_size=16, split="validation")
    _, _, weights = next(iter(validation))
    _, responses = data.formatted(model, split="validation")
    tokenizer = model.preprocessor.tokenizer
    assert float(np.sum(weights)) == sum(len(tokenizer(r)) for r in responses)

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=response_loss(), run_eagerly=True)
    history = model.fit(train, validation_data=validation, epochs=1, verbose=0)
    assert np.isfinite(history.history["val_loss"][0])
    with pytest.raises(KftError, match="holds no examples"):
        data.batches(model, split="test")
    with pytest.raises(KftError, match="InstructionCausalLMPreprocessor"):
        data.batches(kft.text.causal_lm(tiny_model_path))


CHATTERBOT = """categories:
- tests
conversations:
- - Do you like tea?
  - yes
  - 1984
- - Hello
  - Hi
  - How are you?
  - Fine.
- - Do you like tea?
  - yes
"""


def test_chatterbot_yaml_answers_and_dialogues(tmp_path):
    path = tmp_path / "corpus.yml"
    path.write_text(CHATTERBOT)
    data = instructions.from_chatterbot(path, validation_split=0, test_split=0)
    # Statements are read as written: YAML would make `yes` True and 1984 a number.
    assert [(e.prompt, e.response) for e in data.train] == [
        ("Do you like tea?", "yes"), ("Do you like tea?", "1984"), ("Hello", "Hi"),
        ("Hello", "How are you?"), ("Hello", "Fine.")]
    assert data.duplicates == 1 and data.train[1].where == f"{path}, line 6"
    dialogue = instructions.from_chatterbot(tmp_path, conversations="dialogue",
                                            validation_split=0, test_split=0)
    assert dialogue.kind == "chat"
    assert [[m["content"] for m in e.messages] for e in dialogue.train] == [
        ["Do you like tea?", "yes"], ["Hello", "Hi"], ["Hello", "Hi", "How are you?", "Fine."]]
    assert instructions.load(path, validation_split=0, test_split=0).num_train == 5


@pytest.mark.parametrize("text, message", [
    ("conversations:\n- - Hello\n  - Hi\n- Just one line\n", "line 4: a conversation is a list"),
    ("conversations:\n- - Hello\n", "line 2: a conversation is a list of at least two"),
    ("conversations:\n- - Hello\n  - ''\n", "line 2: every statement must be non-empty"),
    ("categories:\n- x\n", "has no 'conversations:' list"),
    ("conversations:\n- - Hello\n  - [Hi\n", "line 4 is not valid YAML"),
])
def test_bad_chatterbot_files_name_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(KftError, match=str(path)) as error:
        instructions.from_chatterbot(path)
    assert message in str(error.value)


@pytest.mark.slow
def test_the_real_chatterbot_corpus():
    data_dir = assets.pypi_package("chatterbot-corpus", "1.3.3") / "chatterbot_corpus" / "data"
    tech = instructions.from_chatterbot(data_dir / "english" / "tech_support.yml")
    # 1,050 pairs, but only 10 distinct: 105 copies each.
    assert tech.duplicates == 1040
    assert (tech.num_train, tech.num_validation, tech.num_test) == (8, 1, 1)
    assert ("My computer won't turn on.",
            "Check if it's plugged in and hold the power button for 10 seconds.") in {
        (e.prompt, e.response) for e in tech.train + tech.validation + tech.test}
    spanish = instructions.from_chatterbot(data_dir / "spanish" / "IA.yml")
    # 58 conversations, 56 distinct questions, 100 answers.
    assert spanish.duplicates == 0
    assert (spanish.num_train, spanish.num_validation, spanish.num_test) == (80, 11, 9)
    assert spanish.train[0].prompt == "Qué es la IA"
    assert spanish.train[0].response.startswith("La inteligencia artificial es la rama")
    with pytest.raises(KftError, match=r"english/trivia.yml, line 35: a conversation is a list"):
        instructions.from_chatterbot(data_dir / "english")
    english = instructions.from_chatterbot(data_dir / "english", skip_malformed=True)
    assert len(english.skipped) == 1 and "trivia.yml, line 35" in english.skipped[0]
