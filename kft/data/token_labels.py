"""Word-level tag data (named entities) from CoNLL-style files or Python lists.

A CoNLL-style file has one word per line, the word in the first column and
its tag in the last (`Paris B-LOC`, columns split by spaces or tabs), and a
blank line between sentences; `-DOCSTART-` lines are skipped. Tags follow the
BIO (IOB2) scheme.

The datasets hold raw sentences, the words joined by single spaces, and word
label ids: a `kft.text.token_classifier` model aligns them to wordpieces
itself, so the same model later tags raw text.

Example:
```python
data = kft.data.token_labels.load("train.conll", validation="dev.conll")
data.class_names  # ['O', 'B-LOC', 'I-LOC', 'B-PER', 'I-PER']
```
"""

import dataclasses
import os
import pathlib

import numpy as np

from kft.data.data import Data
from kft.data.text import length_grouped_batches
from kft.errors import KftError
from kft.evaluation.entities import OUTSIDE
from kft.evaluation.entities import check_tag_layout
from kft.evaluation.entities import split_tag

# The label of positions without one: padding words, and (in the model) later
# wordpieces of a word, special tokens and words cut off. The loss
# (`ignore_class`) and `EntityF1` leave them out.
IGNORED_LABEL = -1


@dataclasses.dataclass
class TaggedSentence:
    """One sentence: its words, their tags, and where it came from.

    Attributes:
        words: the words, none empty or holding whitespace.
        tags: one BIO tag per word.
        source: where the sentence starts, for error messages
            (`"train.conll:12"` or `"sentence 3"`).
        lines: for sentences read from a file, each word's line number.
    """

    words: list
    tags: list
    source: str
    lines: list = None

    def where(self, index):
        """Where word `index` came from, for error messages."""
        if self.lines is not None:
            return f"{self.source.rsplit(':', 1)[0]}:{self.lines[index]}"
        return f"{self.source}, word {index}"


@dataclasses.dataclass(kw_only=True)
class TokenData(Data):
    """Token classification data for a `TokenClassifier`'s `fit` (a `kft.data.Data`).

    `train` holds batches of `(string [B], int32 [B, W])`: sentences (words
    joined by one space) and word label ids padded with `IGNORED_LABEL` to
    the longest sentence, sentences of similar length together, drawn anew
    every epoch from the seed; `validation` the same in a fixed order. `class_names` are the tag names
    in kft's layout `["O", "B-T1", "I-T1", ...]`.

    Attributes:
        validation_sentences: the validation `TaggedSentence`s, in order
            (for `kft.evaluation.entities.entity_scores` reports).
    """

    validation_sentences: list
    task: str = "token_classification"


def read_conll(path, encoding="utf-8"):
    """Reads a CoNLL-style file into sentences.

    Args:
        path: the file: `WORD ... TAG` per line, blank lines between sentences.
        encoding: the file's text encoding.

    Returns:
        A list of `TaggedSentence`.

    Raises:
        KftError: the file is missing, or a line has a single column or a tag
            outside the BIO scheme (the message names the file and line).
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise KftError(f"Tag file {path} does not exist.")
    sentences, words, tags, lines = [], [], [], []

    def close():
        if words:
            sentences.append(TaggedSentence(list(words), list(tags), f"{path}:{lines[0]}", list(lines)))
            words.clear(), tags.clear(), lines.clear()

    with open(path, encoding=encoding) as file:
        for number, line in enumerate(file, start=1):
            columns = line.split()
            if not columns:
                close()
                continue
            if columns[0] == "-DOCSTART-":
                close()
                continue
            if len(columns) < 2:
                raise KftError(
                    f"{path}:{number}: expected 'WORD TAG' (two or more columns), got "
                    f"{line.rstrip()!r}. Put one word and its tag on each line and a blank "
                    "line between sentences."
                )
            try:
                split_tag(columns[-1])
            except KftError as error:
                raise KftError(f"{path}:{number}: {error}") from None
            words.append(columns[0])
            tags.append(columns[-1])
            lines.append(number)
    close()
    if not sentences:
        raise KftError(f"Tag file {path} holds no sentences.")
    return sentences


def from_lists(pairs, name="sentence"):
    """Sentences from Python lists: `[(words, tags), ...]`.

    Args:
        pairs: `(words, tags)` per sentence, `words` a list of strings (or
            one string split on whitespace) and `tags` one BIO tag per word.
        name: what error messages call an entry.

    Returns:
        A list of `TaggedSentence`.

    Raises:
        KftError: a sentence's word and tag counts differ, a word is empty
            or holds whitespace, or a tag is outside the BIO scheme.
    """
    sentences = []
    for number, pair in enumerate(pairs):
        try:
            words, tags = pair
        except (TypeError, ValueError):
            raise KftError(f"{name} {number}: expected a (words, tags) pair, got {pair!r}.") from None
        words = words.split() if isinstance(words, str) else [str(word) for word in words]
        tags = [str(tag) for tag in tags]
        if len(words) != len(tags):
            raise KftError(
                f"{name} {number}: {len(words)} words but {len(tags)} tags; give one tag per word."
            )
        for word in words:
            if not word or word.split() != [word]:
                raise KftError(f"{name} {number}: word {word!r} is empty or holds whitespace.")
        for index, tag in enumerate(tags):
            try:
                split_tag(tag)
            except KftError as error:
                raise KftError(f"{name} {number}, word {index}: {error}") from None
        if words:
            sentences.append(TaggedSentence(words, tags, f"{name} {number}"))
    return sentences


def tag_names(sentences):
    """The tag set of `sentences` in kft's layout: `O`, then `B-`/`I-` per type.

    Types are sorted by name; each type gets both its `B-` and `I-` tag,
    whether or not both occur.

    Args:
        sentences: `TaggedSentence`s, or lists of tags.

    Returns:
        A list like `["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]`.
    """
    kinds = set()
    for sentence in sentences:
        for tag in getattr(sentence, "tags", sentence):
            kinds.add(split_tag(tag)[1])
    kinds.discard(None)
    return [OUTSIDE] + [f"{prefix}-{kind}" for kind in sorted(kinds) for prefix in ("B", "I")]


def encode(sentences, class_names):
    """Word label ids for each sentence.

    Args:
        sentences: `TaggedSentence`s.
        class_names: the tag names.

    Returns:
        A list of int32 arrays, one per sentence.

    Raises:
        KftError: a tag is not in `class_names` (naming where it is).
    """
    index = {tag: number for number, tag in enumerate(class_names)}
    encoded = []
    for sentence in sentences:
        ids = []
        for position, tag in enumerate(sentence.tags):
            if tag not in index:
                raise KftError(
                    f"{sentence.where(position)}: tag {tag!r} is not one of the tags "
                    f"{list(class_names)}; add it to the tags or fix the data."
                )
            ids.append(index[tag])
        encoded.append(np.asarray(ids, dtype=np.int32))
    return encoded


def to_dataset(sentences, class_names, batch_size=16, shuffle=False, seed=0):
    """Batches of `(sentence strings, word label ids padded with -1)`.

    Sentences of similar length are batched together (see
    `kft.data.text.length_grouped_batches`), so a token classifier, which
    pads each batch to its longest sentence, computes little padding.

    Args:
        sentences: `TaggedSentence`s.
        class_names: the tag names.
        batch_size: sentences per batch.
        shuffle: draw new batches in a new order every epoch (from `seed`);
            otherwise a fixed order, sorted by length.
        seed: the shuffling seed.

    Returns:
        A `tf.data.Dataset`, in memory and prefetched.
    """
    texts = [" ".join(sentence.words) for sentence in sentences]
    encoded = encode(sentences, class_names)
    labels = np.full((len(encoded), max(map(len, encoded), default=0)), IGNORED_LABEL, np.int32)
    for row, ids in enumerate(encoded):
        labels[row, : len(ids)] = ids
    return length_grouped_batches(np.array(texts, dtype=object), labels, int(batch_size),
                                  seed=int(seed) if shuffle else None)


def load(source, validation=None, class_names=None, batch_size=16, validation_split=0.1,
         seed=0):
    """Token classification data from CoNLL-style files or Python lists.

    Args:
        source: the training data: a CoNLL-style file, or
            `[(words, tags), ...]`.
        validation: the same for validation; `None` holds out
            `validation_split` of `source` instead.
        class_names: the tag names in kft's layout, or `None` to take the
            tags that occur in the data (see `tag_names`). A tag outside a
            given list raises a `KftError` naming its file and line.
        batch_size: sentences per batch.
        validation_split: fraction of `source` held out when `validation` is
            `None` (0 for no validation).
        seed: seeds the split and the shuffling.

    Returns:
        A `TokenData`.

    Example:
    ```python
    data = kft.data.token_labels.load(
        [("Alice lives in Paris".split(), ["B-PER", "O", "O", "B-LOC"])],
        validation_split=0)
    ```
    """
    train_sentences = _sentences(source, "train")
    if validation is not None:
        validation_sentences = _sentences(validation, "validation")
    else:
        if not 0 <= validation_split < 1:
            raise KftError(f"validation_split must be in [0, 1), got {validation_split}.")
        order = np.random.default_rng(seed).permutation(len(train_sentences))
        held_out = int(round(len(train_sentences) * validation_split))
        validation_sentences = [train_sentences[i] for i in sorted(order[:held_out])]
        train_sentences = [train_sentences[i] for i in sorted(order[held_out:])]
    if not train_sentences:
        raise KftError("The training data holds no sentences.")
    if class_names is None:
        class_names = tag_names(train_sentences + validation_sentences)
    else:
        class_names = [str(tag) for tag in class_names]
        check_tag_layout(class_names)
    return TokenData(
        train=to_dataset(train_sentences, class_names, batch_size, shuffle=True, seed=seed),
        validation=(to_dataset(validation_sentences, class_names, batch_size)
                    if validation_sentences else None),
        class_names=class_names,
        num_train=len(train_sentences),
        num_validation=len(validation_sentences),
        validation_sentences=validation_sentences,
        batch_size=batch_size,
    )


def _sentences(source, what):
    if isinstance(source, (str, os.PathLike)):
        return read_conll(source)
    if isinstance(source, (list, tuple)):
        if source and isinstance(source[0], TaggedSentence):
            return list(source)
        return from_lists(source, name=f"{what} sentence")
    raise KftError(
        f"{what} data must be a CoNLL-style file or a list of (words, tags) pairs, "
        f"got {type(source).__name__}."
    )
