"""Data for generative fine-tuning: prompt/response pairs, chats and plain text.

Three kinds of example, each checked row by row (a broken line names its
file and line):
- `"pairs"`: a prompt and its response, from JSON Lines or CSV/TSV columns
  (`prompt`, `response` unless named otherwise), or chatterbot-corpus YAML
  files (`from_chatterbot`).
- `"chat"`: JSON Lines of `{"messages": [{"role": ..., "content": ...}, ...]}`
  whose last message is the assistant's: that turn is the response, every
  turn before it the prompt.
- `"text"`: `.txt` files for domain adaptation, one document per paragraph
  (blank-line separated), cut into sequence-length chunks later.

Exact duplicates are dropped (chatterbot's English `tech_support.yml`
repeats 10 pairs 105 times each), and the seeded split keeps every
example of one prompt on the same side, so no test question was trained on.

`InstructionData` is not a `kft.data.Data`: `Data` holds `(inputs, labels)`
batches made before the model exists, while a causal LM's batches depend on
the model's tokenizer, chat template and sequence length. `batches(model)`
builds them once the model is there: chat-formatted with the model's own
template (`kft.text.format_chat`), then packed by its
`InstructionCausalLMPreprocessor` into `(x, y, sample_weight)` with the loss
on the responses.
"""

import dataclasses
import pathlib

import numpy as np

from kft.data.text import json_records
from kft.data.text import table_records
from kft.errors import KftError

KINDS = ("pairs", "chat", "text")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
            ".txt": "text", ".yml": "yaml", ".yaml": "yaml"}
_ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Example:
    """One training example and where it came from.

    Attributes:
        where: `"file, line N"` (the line of the response, for pairs).
        prompt, response: the pair (kind `"pairs"`).
        messages: a tuple of `{"role", "content"}` dicts ending with the
            assistant's (kind `"chat"`).
        text: a document (kind `"text"`).
    """

    where: str
    prompt: str | None = None
    response: str | None = None
    messages: tuple | None = None
    text: str | None = None

    def as_messages(self, system_prompt=None):
        """The example as chat messages (a pair is one user and one assistant turn)."""
        from kft.models.chat_format import pair_messages

        if self.messages is None:
            return pair_messages(self.prompt, self.response, system_prompt)
        messages = [dict(message) for message in self.messages]
        if system_prompt is not None and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages


@dataclasses.dataclass(kw_only=True)
class InstructionData:
    """Examples for generative fine-tuning, split into train, validation and test.

    Attributes:
        kind: `"pairs"`, `"chat"` or `"text"` (see the module docstring).
        train, validation, test: lists of `Example`s.
        source: the file(s) read.
        duplicates: exact repeats left out.
        skipped: `"file, line N: why"` for entries left out
            (`from_chatterbot(..., skip_malformed=True)`).
        batch_size: examples per batch of `batches` and `run_data`.
        chat_format, system_prompt: how pairs and chats are rendered for
            the model (see `formatted`); `kft run` keeps them for
            `kft generate`.
        packing: what `run_data` counted (`examples`, `prompts_truncated`,
            `dropped`), else `None`.
    """

    kind: str
    train: list
    validation: list = dataclasses.field(default_factory=list)
    test: list = dataclasses.field(default_factory=list)
    source: str = ""
    duplicates: int = 0
    skipped: list = dataclasses.field(default_factory=list)
    batch_size: int = 8
    chat_format: bool = True
    system_prompt: str | None = None
    packing: dict | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise KftError(f"Instruction data kind {self.kind!r} is not one of {', '.join(KINDS)}.")

    @property
    def num_train(self):
        return len(self.train)

    @property
    def num_validation(self):
        return len(self.validation)

    @property
    def num_test(self):
        return len(self.test)

    def examples(self, split="train"):
        """The examples of `split` (`"train"`, `"validation"` or `"test"`)."""
        if split not in ("train", "validation", "test"):
            raise KftError(f"split must be 'train', 'validation' or 'test', got {split!r}.")
        return getattr(self, split)

    def formatted(self, tokenizer_or_model, split="train", chat_format=None, system_prompt=None):
        """Prompts and responses as the model will see them.

        Args:
            tokenizer_or_model: a keras-hub causal LM, its preprocessor or
                its tokenizer (for the chat template and its tokens).
            split: `"train"`, `"validation"` or `"test"`.
            chat_format: render each example with the model's chat template
                (`kft.text.format_chat`; ChatML if it has none): the prompt
                ends with the opened assistant turn, the response with the
                end-of-turn token. `False`: pairs as they are (already
                formatted); chats cannot be used unformatted. `None`: the
                data's own `chat_format`.
            system_prompt: a system message put first where an example has
                none (`None`: the data's `system_prompt`, else the
                template's own default, if any).

        Returns:
            `(prompts, responses)`: two lists of strings.

        Example:
        ```python
        prompts, responses = data.formatted(model, split="test")
        model.generate(prompts[:4], strip_prompt=True)  # compare with responses[:4]
        ```
        """
        from kft.models.chat_format import prompt_and_response

        if self.kind == "text":
            raise KftError("Text data has documents, not prompts and responses.")
        chat_format = self.chat_format if chat_format is None else chat_format
        system_prompt = self.system_prompt if system_prompt is None else system_prompt
        prompts, responses = [], []
        for example in self.examples(split):
            if chat_format:
                try:
                    prompt, response = prompt_and_response(
                        tokenizer_or_model, example.as_messages(system_prompt))
                except KftError as error:
                    raise KftError(f"{example.where}: {error}") from None
            elif example.messages is not None:
                raise KftError("Chat examples need their chat template: use chat_format=True.")
            else:
                prompt, response = example.prompt, example.response
            prompts.append(prompt)
            responses.append(response)
        return prompts, responses

    def batches(self, model_or_preprocessor, batch_size=None, split="train", seed=0,
                chat_format=None, system_prompt=None, shuffle=None):
        """`tf.data` batches of `(x, y, sample_weight)` for a causal LM's `fit`.

        Pairs and chats are chat-formatted (`formatted`) and packed by the
        model's `InstructionCausalLMPreprocessor` (loss on the responses);
        text documents are tokenized here and cut into chunks of
        `sequence_length` tokens with the start and end tokens of the
        model's preprocessor, each chunk within one document, every token
        but a document's first a label once. The batches pass through the
        model's preprocessor unchanged, so `model.fit(data.batches(model))`.

        Every example is tokenized and packed once, here: keras-hub's BPE
        tokenizer inside a `tf.data` map costs about 3 s each time an
        iterator starts (each epoch's validation, each `evaluate`), more
        than a tiny model's whole epoch. Each batch is then cut to its
        longest example, rounded up to the preprocessor's
        `pad_to_multiple_of`, as the preprocessor itself pads.

        Args:
            model_or_preprocessor: a causal LM whose preprocessor is an
                `InstructionCausalLMPreprocessor`
                (`kft.models.instruction_preprocessor.use_instruction_preprocessor`),
                or that preprocessor.
            batch_size: examples (chunks, for text) per batch (default: the
                data's `batch_size`).
            split: `"train"`, `"validation"` or `"test"`.
            seed: seeds the order, drawn anew every epoch.
            chat_format, system_prompt: as for `formatted`. A preprocessor with
                `apply_chat_template=True` formats pairs itself: they go to it
                unformatted.
            shuffle: reshuffle every epoch (default: only for `"train"`).

        Returns:
            A `tf.data.Dataset`.

        Raises:
            KftError: the split is empty, or the preprocessor is not an
                `InstructionCausalLMPreprocessor`.

        Example:
        ```python
        data = kft.data.instructions.load("support.jsonl")
        model = use_instruction_preprocessor(kft.text.causal_lm("smollm2-135m-instruct"))
        model.compile(optimizer=keras.optimizers.AdamW(2e-5), loss=response_loss())
        model.fit(data.batches(model), validation_data=data.batches(model, split="validation"))
        ```
        """
        import tensorflow as tf

        preprocessor = _instruction_preprocessor(model_or_preprocessor)
        examples = self.examples(split)
        if not examples:
            raise KftError(f"The {split} split of {self.source or 'the data'} holds no examples.")
        batch_size = self.batch_size if batch_size is None else batch_size
        chat_format = self.chat_format if chat_format is None else chat_format
        if int(batch_size) < 1:
            raise KftError(f"batch_size must be at least 1, got {batch_size}.")
        shuffle = split == "train" if shuffle is None else shuffle
        if self.kind == "text":
            dataset = tf.data.Dataset.from_tensor_slices(_chunks(preprocessor, examples))
        else:
            if preprocessor.apply_chat_template and chat_format:
                if self.kind == "chat":
                    raise KftError(
                        "This preprocessor formats single prompts itself "
                        "(apply_chat_template=True); multi-turn chats are formatted here: "
                        "use one with apply_chat_template=False.")
                chat_format = False  # The preprocessor renders them.
            prompts, responses = self.formatted(preprocessor.tokenizer, split, chat_format,
                                                system_prompt)
            packed = preprocessor({"prompt": prompts, "response": responses})
            dataset = tf.data.Dataset.from_tensor_slices(packed)
        count = int(dataset.cardinality())
        if shuffle:
            dataset = dataset.shuffle(count, seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.batch(int(batch_size))
        if self.kind != "text" and preprocessor.pad_to_multiple_of:
            dataset = dataset.map(_cut_to_longest(preprocessor.pad_to_multiple_of))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def run_data(self, model, seed=0):
        """The examples as the `kft.data.Data` a run fits (task `"causal_lm"`).

        Gives `model` an `InstructionCausalLMPreprocessor` first if it has
        another preprocessor (keeping its tokenizer and sequence length), so
        a recipe's `model()` can return `kft.text.causal_lm(...)` as it is.

        Args:
            model: a keras-hub `CausalLM` with its preprocessor.
            seed: seeds the training order.

        Returns:
            A `Data` whose `train`, `validation` and `test` are `batches`
            of each split (`None` for an empty one) and whose
            `instructions` is this data. `packing` then says how many
            examples were packed, how many prompts were shortened to fit
            and how many examples were left out (weight 0: the response
            alone does not fit).

        Raises:
            KftError: pairs or chats are to be chat-formatted, but the model
                has no chat template and its tokenizer lacks the default
                template's tokens (`<|im_start|>`, `<|im_end|>`), so it
                could never learn where a turn ends.
        """
        from kft.data.data import Data
        from kft.models import instruction_preprocessor

        if not isinstance(getattr(model, "preprocessor", None),
                          instruction_preprocessor.InstructionCausalLMPreprocessor):
            instruction_preprocessor.use_instruction_preprocessor(model)
        if self.kind != "text" and self.chat_format:
            _check_chat_tokens(model.preprocessor.tokenizer)
        model.preprocessor.reset_counts()
        train = self.batches(model, split="train", seed=seed)
        held = {split: self.batches(model, split=split) if self.examples(split) else None
                for split in ("validation", "test")}
        self.packing = model.preprocessor.truncation_counts
        return Data(train=train, class_names=[],
                    num_train=self.num_train, num_validation=self.num_validation,
                    num_test=self.num_test, batch_size=int(self.batch_size),
                    skipped=list(self.skipped), task="causal_lm", instructions=self, **held)


def load(path, validation_split=0.1, test_split=0.1, seed=0, prompt_column="prompt",
         response_column="response", messages_column="messages", validation=None, test=None,
         deduplicate=True, batch_size=8):
    """Reads prompt/response pairs, chats or plain text from a file.

    Args:
        path: a `.jsonl` / `.ndjson` file (an object per line: a prompt and
            a response, or a `messages` list), a `.csv` / `.tsv` file with a
            header row, a `.txt` file (documents separated by blank lines),
            or a chatterbot-corpus `.yml` file (see `from_chatterbot`).
        validation_split, test_split: the share of prompts (documents, for
            text) held out; every example of one prompt lands in the same set.
        seed: seeds the split.
        prompt_column, response_column: the fields (columns) of a pair.
        messages_column: the field of a chat's message list.
        validation, test: separate files of the same kind, used instead of
            the splits.
        deduplicate: leave out exact repeats (counted in `duplicates`).
        batch_size: the data's `batch_size`.

    Returns:
        An `InstructionData`.

    Raises:
        KftError: an unknown extension, a missing or empty field, a line that
            is not JSON, a chat without a final assistant turn, or a file
            with no examples: naming the file and line.

    Example:
    ```python
    data = kft.data.instructions.load("support.jsonl", test_split=0.2)
    data.kind, data.num_train  # ('pairs', 800)
    ```
    """
    columns = dict(prompt_column=prompt_column, response_column=response_column,
                   messages_column=messages_column)
    kind, examples = read_file(path, **columns)
    held = {}
    for name, file in (("validation", validation), ("test", test)):
        if file is not None:
            held_kind, held[name] = read_file(file, **columns)
            if held_kind != kind:
                raise KftError(f"{file} holds {held_kind} examples, but {path} holds {kind}.")
    return _instruction_data(kind, examples, held, validation_split, test_split, seed,
                             deduplicate, str(path), batch_size)


def from_lists(prompts, responses, validation_split=0.1, test_split=0.1, seed=0,
               deduplicate=True, batch_size=8):
    """Builds pairs from two lists of strings (see `load` for the arguments).

    Example:
    ```python
    data = kft.data.instructions.from_lists(["2+2?", "3+3?"], ["4", "6"], 0, 0)
    ```
    """
    prompts, responses = list(prompts), list(responses)
    if len(prompts) != len(responses):
        raise KftError(f"{len(prompts)} prompts but {len(responses)} responses.")
    examples = []
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        where = f"the lists, item {i}"
        examples.append(Example(where, prompt=_string(prompt, where, "prompt"),
                                response=_string(response, where, "response")))
    return _instruction_data("pairs", examples, {}, validation_split, test_split, seed,
                             deduplicate, "the lists", batch_size)


def read_file(path, prompt_column="prompt", response_column="response",
              messages_column="messages"):
    """Reads the examples of one file, checked line by line (see `load`).

    Returns:
        `(kind, examples)`: `"pairs"`, `"chat"` or `"text"`, and a list of
        `Example`s in file order.
    """
    path = pathlib.Path(path).expanduser()
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise KftError(
            f"Data file {path} is not .jsonl, .csv, .tsv, .txt or .yml; kft reads "
            "instruction data from those."
        )
    if not path.is_file():
        raise KftError(f"Data file {path} does not exist.")
    if kind == "yaml":
        data = from_chatterbot(path, validation_split=0, test_split=0, deduplicate=False)
        return data.kind, data.train
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            if kind == "text":
                examples = _paragraphs(handle, path)
                kind = "text"
            elif kind == "jsonl":
                kind, examples = _json_examples(handle, path, prompt_column, response_column,
                                                messages_column)
            else:
                examples = _table_examples(handle, path, kind, prompt_column, response_column)
                kind = "pairs"
    except UnicodeDecodeError as error:
        raise KftError(f"Data file {path} is not UTF-8 text ({error.reason} at byte "
                       f"{error.start}).") from None
    if not examples:
        raise KftError(f"Data file {path} holds no examples.")
    return kind, examples


def from_chatterbot(paths_or_folder, validation_split=0.1, test_split=0.1, seed=0,
                    conversations="answers", deduplicate=True, skip_malformed=False,
                    batch_size=8):
    """Reads chatterbot-corpus YAML files (`categories:` and `conversations:` lists).

    Each conversation is a list of statements. With `conversations="answers"`
    the first is a question and each later one an answer to it: one pair
    per answer (how most of the corpus' files are written). ChatterBot
    itself reads every statement as the reply to the one before it
    (`conversations="dialogue"`, right for files like `conversations.yml`):
    then turns alternate user, assistant, user, ..., and every assistant
    turn is a chat example with the turns before it. Statements are read as
    written (YAML would turn an unquoted `yes` into `True`, `1984` into a
    number).

    The corpus ships in the PyPI package `chatterbot-corpus` (files under
    `chatterbot_corpus/data/<language>/`).

    Args:
        paths_or_folder: a `.yml` file, a folder (every `.yml`/`.yaml`
            below it, in name order) or a list of files and folders.
        validation_split, test_split, seed, deduplicate, batch_size: as for `load`.
        conversations: `"answers"` or `"dialogue"` (see above).
        skip_malformed: leave out conversations that are not a list of at
            least two statements (listed in `skipped`) instead of raising.
            Version 1.3.3 has ten, e.g. `english/trivia.yml` line 35.

    Returns:
        An `InstructionData` of kind `"pairs"` (`"chat"` for dialogues).

    Raises:
        KftError: a file that is not YAML, has no `conversations` list, or
            (unless skipped) a malformed conversation, naming file and line.

    Example:
    ```python
    root = kft.internal.assets.pypi_package("chatterbot-corpus", "1.3.3")
    data = kft.data.instructions.from_chatterbot(
        root / "chatterbot_corpus/data/english/tech_support.yml")
    data.num_train, data.duplicates  # (8, 1040)
    ```
    """
    if conversations not in ("answers", "dialogue"):
        raise KftError(f"conversations must be 'answers' or 'dialogue', got {conversations!r}.")
    files = _yaml_files(paths_or_folder)
    examples, skipped = [], []
    for path in files:
        for where, statements in _chatterbot_conversations(path, skipped if skip_malformed
                                                           else None):
            examples.extend(_conversation_examples(statements, where, conversations))
    if not examples:
        raise KftError(f"{', '.join(map(str, files))} hold no conversations.")
    kind = "chat" if conversations == "dialogue" else "pairs"
    source = str(files[0]) if len(files) == 1 else f"{len(files)} chatterbot files"
    data = _instruction_data(kind, examples, {}, validation_split, test_split, seed,
                             deduplicate, source, batch_size)
    data.skipped = skipped
    return data


def chatterbot_statements(paths_or_folder):
    """Every statement (questions and answers) of chatterbot-corpus YAML files, in order.

    Malformed conversations are left out.

    Args:
        paths_or_folder: as for `from_chatterbot`.

    Returns:
        A list of strings.
    """
    return [statement for path in _yaml_files(paths_or_folder)
            for _, statements in _chatterbot_conversations(path, skipped=[])
            for statement in statements]


def _yaml_files(paths_or_folder):
    items = paths_or_folder if isinstance(paths_or_folder, (list, tuple)) else [paths_or_folder]
    files = []
    for item in items:
        path = pathlib.Path(item).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in (".yml", ".yaml"))
        elif path.is_file():
            files.append(path)
        else:
            raise KftError(f"Chatterbot corpus file or folder {path} does not exist.")
    if not files:
        raise KftError(f"No .yml files in {', '.join(map(str, items))}.")
    return files


def _chatterbot_conversations(path, skipped):
    """Yields `(where, statements)` per conversation; `where` lists each statement's place."""
    try:
        import yaml
    except ImportError:
        raise KftError("Reading chatterbot YAML files needs PyYAML: pip install 'kft[llm]'.") \
            from None
    try:
        with open(path, encoding="utf-8") as handle:
            # compose, not safe_load: nodes keep their line and the text as written.
            root = yaml.compose(handle, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise KftError(f"{path}{line} is not valid YAML ({getattr(error, 'problem', error)}).") \
            from None
    except UnicodeDecodeError as error:
        raise KftError(f"{path} is not UTF-8 text ({error.reason}).") from None
    fields = {}
    if isinstance(root, yaml.MappingNode):
        fields = {key.value: value for key, value in root.value
                  if isinstance(key, yaml.ScalarNode)}
    conversations = fields.get("conversations")
    if not isinstance(conversations, yaml.SequenceNode):
        raise KftError(f"{path} has no 'conversations:' list; a chatterbot corpus file has "
                       "'categories:' and 'conversations:' (lists of statements).")
    for node in conversations.value:
        line = node.start_mark.line + 1
        statements = node.value if isinstance(node, yaml.SequenceNode) else None
        problem = None
        if statements is None or len(statements) < 2:
            problem = ("a conversation is a list of at least two statements (a question, then "
                       f"its answers); this is {_node_text(node)}")
        elif not all(isinstance(s, yaml.ScalarNode) and s.value.strip() for s in statements):
            problem = "every statement must be non-empty text"
        if problem is not None:
            if skipped is None:
                raise KftError(f"{path}, line {line}: {problem}. Fix the file or pass "
                               "skip_malformed=True.")
            skipped.append(f"{path}, line {line}: {problem}")
            continue
        yield ([f"{path}, line {s.start_mark.line + 1}" for s in statements],
               [s.value.strip() for s in statements])


def _node_text(node):
    import yaml

    if isinstance(node, yaml.ScalarNode):
        return f"the single text {node.value[:60]!r}"
    if isinstance(node, yaml.SequenceNode):
        return f"a list of {len(node.value)}"
    return "a mapping"


def _conversation_examples(statements, where, conversations):
    if conversations == "answers":
        return [Example(where[i], prompt=statements[0], response=statements[i])
                for i in range(1, len(statements))]
    roles = ["user" if i % 2 == 0 else "assistant" for i in range(len(statements))]
    turns = [{"role": role, "content": text} for role, text in zip(roles, statements)]
    return [Example(where[i], messages=tuple(turns[:i + 1]))
            for i in range(1, len(statements), 2)]


def _json_examples(handle, path, prompt_column, response_column, messages_column):
    kind, first_line, examples = None, None, []
    for number, record in json_records(handle, path):
        where = f"{path}, line {number}"
        this = "chat" if messages_column in record else "pairs"
        if kind is None:
            kind, first_line = this, number
        elif this != kind:
            what = {"chat": f"a {messages_column!r} list", "pairs": "a prompt/response pair"}
            raise KftError(f"{where} holds {what[this]}, but line {first_line} held "
                           f"{what[kind]}; one file holds one kind.")
        if kind == "chat":
            examples.append(Example(where, messages=_messages(record[messages_column], where)))
        else:
            _require(record, (prompt_column, response_column), where)
            examples.append(Example(where, prompt=_string(record[prompt_column], where, "prompt"),
                                    response=_string(record[response_column], where,
                                                     "response")))
    return kind or "pairs", examples


def _table_examples(handle, path, kind, prompt_column, response_column):
    examples = []
    for number, record in table_records(
            handle, path, kind, (prompt_column, response_column),
            hint="Name them with prompt_column= and response_column=."):
        where = f"{path}, line {number}"
        examples.append(Example(where, prompt=_string(record[prompt_column], where, "prompt"),
                                response=_string(record[response_column], where, "response")))
    return examples


def _paragraphs(handle, path):
    examples, lines, start = [], [], None
    for number, line in enumerate(handle, start=1):
        if line.strip():
            if start is None:
                start = number
            lines.append(line)
        elif lines:
            examples.append(Example(f"{path}, line {start}", text="".join(lines).strip()))
            lines, start = [], None
    if lines:
        examples.append(Example(f"{path}, line {start}", text="".join(lines).strip()))
    return examples


def _messages(messages, where):
    if not isinstance(messages, list) or not messages:
        raise KftError(f"{where}: 'messages' must be a non-empty list of "
                       "{\"role\": ..., \"content\": ...} objects.")
    checked = []
    for index, message in enumerate(messages, start=1):
        place = f"{where}, message {index}"
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise KftError(f"{place} is not a {{\"role\": ..., \"content\": ...}} object.")
        if message["role"] not in _ROLES:
            raise KftError(f"{place}: role {message['role']!r} is not one of "
                           f"{', '.join(_ROLES)}.")
        checked.append({"role": message["role"],
                        "content": _string(message["content"], place, "content")})
    if checked[-1]["role"] != "assistant":
        raise KftError(f"{where}: the last message is the {checked[-1]['role']}'s; a training "
                       "chat ends with the assistant's turn, the response to learn.")
    if not any(message["role"] == "user" for message in checked[:-1]):
        raise KftError(f"{where}: no user message comes before the assistant's answer.")
    return tuple(checked)


def _require(record, columns, where):
    for column in columns:
        if column not in record:
            raise KftError(
                f"{where} has no {column!r} field; it has {', '.join(map(repr, record))}. "
                "Name the fields with prompt_column= and response_column=."
            )


def _string(value, where, what):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # A JSON number answer ("4") is text to a language model.
    if not isinstance(value, str):
        raise KftError(f"{where}: the {what} is a {type(value).__name__}, not text.")
    if not value.strip():
        raise KftError(f"{where}: the {what} is empty; remove the row or fill it in.")
    return value


def _key(example):
    if example.messages is not None:
        return ("chat",) + tuple((m["role"], m["content"]) for m in example.messages)
    if example.text is not None:
        return ("text", example.text)
    return ("pair", example.prompt, example.response)


def _group(example, index):
    """What must stay on one side of the split: a prompt, a chat's history."""
    if example.messages is not None:
        return _key(Example("", messages=example.messages[:-1]))
    if example.text is not None:
        return ("document", index)
    return ("prompt", example.prompt)


def _instruction_data(kind, examples, held, validation_split, test_split, seed, deduplicate,
                      source, batch_size=8):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise KftError(f"batch_size must be a whole number >= 1, got {batch_size!r}.")
    for name, fraction in (("validation_split", validation_split), ("test_split", test_split)):
        if not 0 <= fraction < 1:
            raise KftError(f"{name} must be in [0, 1), got {fraction}.")
    duplicates = 0
    if deduplicate:
        unique = {}
        for example in examples:
            unique.setdefault(_key(example), example)
        duplicates = len(examples) - len(unique)
        examples = list(unique.values())
    groups = [_group(example, i) for i, example in enumerate(examples)]
    order = list(dict.fromkeys(groups))  # Distinct groups, in file order.
    shuffled = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    sets, taken = {}, 0
    what = "documents" if kind == "text" else "prompts"
    for name, fraction in (("test", test_split), ("validation", validation_split)):
        if name in held:
            sets[name] = held[name]
            continue
        count = int(round(fraction * len(order)))
        if fraction > 0 and count == 0:
            raise KftError(f"{name}_split={fraction} of {len(order)} distinct {what} in {source} "
                           "holds out none; add examples, raise it, or set it to 0.")
        chosen = set(shuffled[taken:taken + count])
        taken += count
        sets[name] = [e for e, g in zip(examples, groups) if g in chosen]
    if taken >= len(order):
        raise KftError(f"{source} has {len(order)} distinct {what}: the splits leave none to "
                       "train on; lower validation_split and test_split.")
    train_groups = set(shuffled[taken:])
    train = [e for e, g in zip(examples, groups) if g in train_groups]
    return InstructionData(kind=kind, train=train, validation=sets["validation"],
                           test=sets["test"], source=source, duplicates=duplicates,
                           batch_size=batch_size)


def _instruction_preprocessor(model_or_preprocessor):
    from kft.models.instruction_preprocessor import InstructionCausalLMPreprocessor

    preprocessor = getattr(model_or_preprocessor, "preprocessor", model_or_preprocessor)
    if not isinstance(preprocessor, InstructionCausalLMPreprocessor):
        raise KftError(
            f"Instruction batches need an InstructionCausalLMPreprocessor, not a "
            f"{type(preprocessor).__name__}: call kft.models.instruction_preprocessor."
            "use_instruction_preprocessor(model) first."
        )
    return preprocessor


def _check_chat_tokens(tokenizer):
    from kft.models.chat_format import chat_template_of

    if chat_template_of(tokenizer):
        return
    missing = [token for token in ("<|im_start|>", "<|im_end|>")
               if len(tokenizer(token)) != 1]
    if missing:
        raise KftError(
            f"The model has no chat template, and its tokenizer splits the default (ChatML) "
            f"template's {' and '.join(missing)} into pieces, so it could not learn where an "
            "answer ends. Use a model with a chat template, add the tokens "
            "(kft.text.add_tokens), or give pre-formatted prompts with chat_format=False.")


def _cut_to_longest(multiple):
    """A batch's columns past its longest example (rounded up to `multiple`) dropped."""
    import tensorflow as tf

    from kft.models.dynamic_padding import padded_length

    def cut(x, y, weights):
        lengths = tf.reduce_sum(tf.cast(x["padding_mask"], tf.int32), axis=1)
        width = padded_length(lengths, tf.shape(y)[1], multiple)
        x = {key: value[:, :width] for key, value in x.items()}
        return x, y[:, :width], weights[:, :width]

    return cut


def _chunks(preprocessor, examples):
    """Documents as `(x, y, sample_weight)` arrays of `sequence_length` tokens."""
    tokenizer = preprocessor.tokenizer
    length = int(preprocessor.sequence_length)
    pad = tokenizer.pad_token_id
    rows = []
    for ids in tokenizer([example.text for example in examples]):
        ids = [int(i) for i in ids]
        if preprocessor.add_start_token:
            ids.insert(0, tokenizer.start_token_id)
        if preprocessor.add_end_token:
            ids.append(tokenizer.end_token_id)  # A document ends: end of text, not of turn.
        # Windows of length + 1 that overlap by one token: each token but the
        # first is a label exactly once.
        for start in range(0, max(len(ids) - 1, 1), length):
            window = ids[start:start + length + 1]
            if len(window) >= 2:
                rows.append(window)
    token_ids = np.full((len(rows), length + 1), pad, "int32")
    mask = np.zeros((len(rows), length + 1), bool)
    for i, window in enumerate(rows):
        token_ids[i, :len(window)] = window
        mask[i, :len(window)] = True
    x = {"token_ids": token_ids[:, :-1], "padding_mask": mask[:, :-1]}
    return x, token_ids[:, 1:], mask[:, 1:].astype("float32")
