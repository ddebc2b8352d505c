"""Text classification data from CSV, TSV and JSON Lines files, TFDS and lists.

Every source ends the same way: texts and labels held in memory, checked
row by row (an empty text or an unknown label names its file and line), a
seeded split per class into train, validation and test, and batches of
`(tf.string [B], int32 [B])` (or `float32 [B, classes]` multi-hot labels for
multi-label data) that `kft.text.text_classifier` models take directly.
Class imbalance is handled here too: class weights for the loss or
oversampling of rare classes.
"""

import csv
import dataclasses
import json
import os
import pathlib
import re

import numpy as np
import tensorflow as tf

from kft.data import tfds_source
from kft.data.data import Data
from kft.data.splits import stratified_holdout
from kft.errors import KftError

_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_BALANCE = (None, "none", "class_weight", "oversample")
# The separator of several labels in one CSV/TSV cell of multi-label data.
LABEL_SEPARATOR = "|"
# Batches per mega-batch of `length_grouped_batches` (Hugging Face's factor).
_MEGA_BATCHES = 50


@dataclasses.dataclass(kw_only=True)
class TextData(Data):
    """Text classification data, ready for `model.fit` (a `kft.data.Data`).

    `train` holds batches of `(tf.string [B], labels)` of texts of similar
    length, drawn anew every epoch from the seed (rare classes repeated when
    oversampling; `num_train` counts them); `validation` and `test` the same
    in a fixed order, sorted by length (`group_by_length=False`: plain
    shuffled batches, and the files' order). Labels
    are int32 class indices, or multi-hot `float32 [B, classes]` vectors
    when `multi_label`.
    """

    task: str = "text_classification"


@dataclasses.dataclass
class _Rows:
    """Texts and raw label values read from one source, with their origins."""

    texts: list
    labels: list
    where: list  # "file.csv, line 7" for each row

    def __len__(self):
        return len(self.texts)


def from_lists(
    texts,
    labels,
    class_names=None,
    validation=None,
    test=None,
    validation_split=0.1,
    test_split=0.0,
    batch_size=32,
    seed=0,
    balance=None,
    multi_label=False,
    group_by_length=True,
):
    """Builds `TextData` from Python lists (or arrays) of texts and labels.

    Args:
        texts: strings.
        labels: a class name or index per text; for `multi_label`, a list of
            them per text.
        class_names: the classes in label-index order. By default the sorted
            distinct labels (numerically, when every label is a number).
        validation: optional `(texts, labels)` held-out pair; otherwise
            `validation_split` of each class is held out.
        test: optional `(texts, labels)` test pair; otherwise `test_split`.
        validation_split: fraction of each class for validation.
        test_split: fraction of each class for test.
        batch_size: texts per batch.
        seed: seeds the splits and the shuffling.
        balance: `None`, `"class_weight"` (weights inversely proportional to
            class frequency, passed to `fit`) or `"oversample"` (training
            texts of rarer classes repeated up to the largest class).
        multi_label: each text has a list of labels (multi-hot targets).
        group_by_length: batch texts of similar length together (training
            batches are still drawn anew and in a new order every epoch), so
            a model that pads each batch to its longest text
            (`kft.text.text_classifier`) computes little padding; `False`
            batches in plain shuffled order.

    Returns:
        A `TextData`.

    Example:
    ```python
    data = kft.data.text.from_lists(
        ["great phone", "broke in a day", "love it", "awful"],
        ["pos", "neg", "pos", "neg"], validation_split=0.5)
    data.class_names  # ['neg', 'pos']
    ```
    """
    rows = _rows_from_lists(texts, labels, "the training lists")
    held = {}
    for name, pair in (("validation", validation), ("test", test)):
        if pair is not None:
            held[name] = _rows_from_lists(pair[0], pair[1], f"the {name} lists")
    return _text_data(rows, held, class_names, validation_split, test_split, batch_size,
                      seed, balance, multi_label, group_by_length)


def read_file(path, text_column="text", label_column="label", multi_label=False):
    """Reads texts and raw labels from a CSV, TSV or JSON Lines file.

    CSV and TSV files have a header row naming the columns; JSON Lines files
    have one object per line. For multi-label data a JSON label is a list
    and a CSV/TSV label cell separates labels with `|`.

    Args:
        path: a `.csv`, `.tsv`, `.jsonl` or `.ndjson` file.
        text_column: the column (key) holding the text.
        label_column: the column (key) holding the label.
        multi_label: read a list of labels per row.

    Returns:
        `(texts, labels)` lists.

    Raises:
        KftError: an unknown extension, a missing column, an empty text or a
            missing label, naming the file and line.
    """
    rows = _read_rows(path, text_column, label_column, multi_label)
    return rows.texts, rows.labels


def read_texts(path, text_column="text"):
    """Reads the texts of a CSV, TSV or JSON Lines file, without labels (to predict).

    Args:
        path: a `.csv`, `.tsv`, `.jsonl` or `.ndjson` file.
        text_column: the column (key) holding the text.

    Returns:
        `(texts, places)`: the texts and `"file, line N"` for each.
    """
    rows = _read_rows(path, text_column, None, multi_label=False)
    return rows.texts, rows.where


def from_file(
    path,
    text_column="text",
    label_column="label",
    class_names=None,
    validation=None,
    test=None,
    validation_split=0.1,
    test_split=0.0,
    batch_size=32,
    seed=0,
    balance=None,
    multi_label=False,
    group_by_length=True,
):
    """Reads a CSV, TSV or JSON Lines file of labelled texts (see `read_file`).

    Args:
        path: the training file.
        text_column: the column (key) holding the text.
        label_column: the column (key) holding the label.
        class_names: the classes in label-index order; a label outside them
            is an error naming its file and line. By default the sorted
            distinct training labels.
        validation: optional validation file in the same format; otherwise
            `validation_split` of each class is held out.
        test: optional test file; otherwise `test_split` is held out.
        validation_split, test_split, batch_size, seed, balance, multi_label,
            group_by_length: as for `from_lists`.

    Returns:
        A `TextData`.

    Example:
    ```python
    data = kft.data.text.from_file("reviews.csv", text_column="review",
                                   label_column="stars", test="test.csv")
    ```
    """
    columns = dict(text_column=text_column, label_column=label_column, multi_label=multi_label)
    rows = _read_rows(path, **columns)
    held = {}
    for name, file in (("validation", validation), ("test", test)):
        if file is not None:
            held[name] = _read_rows(file, **columns)
    return _text_data(rows, held, class_names, validation_split, test_split, batch_size,
                      seed, balance, multi_label, group_by_length)


def from_tfds(name, validation_split=0.1, test_split=None, batch_size=32, seed=0,
              balance=None, data_dir=None, group_by_length=True):
    """Loads a TFDS text classification dataset (`imdb_reviews`, `ag_news_subset`, ...).

    Its supervised `(text, label)` pairs are used; the `train` split trains
    (minus `validation_split`) and a `test` split, when the dataset has one,
    is the test set (otherwise `test_split` of train is held out). The
    download needs network access.

    Args:
        name: a TFDS name, optionally with a version (`"imdb_reviews:1.0.0"`).
        validation_split, batch_size, seed, balance, group_by_length: as for
            `from_lists`.
        test_split: fraction held out for test when the dataset has no test
            split (`None`: 0).
        data_dir: where TFDS keeps its datasets.

    Returns:
        A `TextData` with class names from the dataset's label feature.
    """
    builder, class_names = tfds_source.prepared_builder(
        name, data_dir, "text", "a CSV, TSV or JSON Lines file with --data FILE")

    def read(split):
        texts, labels = [], []
        for text, label in builder.as_dataset(split=split, as_supervised=True):
            texts.append(text.numpy().decode("utf-8"))
            labels.append(int(label))
        return _Rows(texts, labels, [f"TFDS {name} {split}, example {i}" for i in range(len(texts))])

    held = {}
    try:
        held["test"] = read("test")
    except (ValueError, KeyError):
        pass  # No test split: test_split holds one out of train.
    return _text_data(read("train"), held, class_names, validation_split,
                      test_split or 0.0, batch_size, seed, balance, False, group_by_length)


def load(source, text_column="text", label_column="label", **options):
    """Loads text classification data from whatever `source` names.

    Args:
        source: a `.csv`, `.tsv` or `.jsonl` file (see `from_file`),
            `"tfds:NAME"` (see `from_tfds`), or a `(texts, labels)` pair of
            lists (see `from_lists`).
        text_column, label_column: the columns of a file.
        **options: `class_names`, `validation`, `test`, `validation_split`,
            `test_split`, `batch_size`, `seed`, `balance`, `multi_label`.

    Returns:
        A `TextData`.
    """
    if isinstance(source, (tuple, list)) and len(source) == 2:
        return from_lists(source[0], source[1], **options)
    if not isinstance(source, (str, os.PathLike)):
        raise KftError(
            f"Cannot read text data from a {type(source).__name__}; pass a CSV, TSV or "
            "JSON Lines file, 'tfds:NAME' or a (texts, labels) pair."
        )
    text = os.fspath(source)
    name = tfds_source.named(text)
    if name is not None:
        # A TFDS dataset brings its own classes and test split.
        ignored = [key for key in ("class_names", "validation", "test") if options.get(key)]
        ignored += ["multi_label"] if options.get("multi_label") else []
        if ignored:
            raise KftError(
                f"{text}: a TFDS dataset brings its own classes and test split, so "
                f"{', '.join(ignored)} cannot apply; drop them or use a local file."
            )
        for key in ("class_names", "validation", "test", "multi_label"):
            options.pop(key, None)
        return from_tfds(name, **options)
    return from_file(text, text_column=text_column, label_column=label_column, **options)


def class_weights(label_indices, num_classes):
    """Weights inversely proportional to class frequency, mean 1 over texts.

    `n / (num_classes * count)`: what scikit-learn calls "balanced".
    Classes without texts get weight 0.
    """
    counts = np.bincount(np.asarray(label_indices), minlength=num_classes)
    total = counts.sum()
    return {i: float(total / (num_classes * c)) if c else 0.0 for i, c in enumerate(counts)}


def _rows_from_lists(texts, labels, what):
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise KftError(f"In {what}: {len(texts)} texts but {len(labels)} labels.")
    where = [f"{what}, item {i}" for i in range(len(texts))]
    for text, place in zip(texts, where):
        _check_text(text, place)
    return _Rows([str(t) for t in texts], labels, where)


def _read_rows(path, text_column, label_column, multi_label):
    path = pathlib.Path(path).expanduser()
    kind = _FORMATS.get(path.suffix.lower())
    if kind is None:
        raise KftError(
            f"Data file {path} is not .csv, .tsv or .jsonl; kft reads text data from "
            "those (or 'tfds:NAME')."
        )
    if not path.is_file():
        raise KftError(f"Data file {path} does not exist.")
    rows = _Rows([], [], [])
    # Without a label column: texts to predict.
    columns = (text_column,) if label_column is None else (text_column, label_column)
    with open(path, newline="", encoding="utf-8") as handle:
        if kind == "jsonl":
            records = json_records(handle, path)
        else:
            records = table_records(handle, path, kind, columns,
                                    hint="Name the columns with text_column= and label_column=.")
        for line, record in records:
            place = f"{path}, line {line}"
            for column in columns:
                if column not in record:
                    raise KftError(
                        f"{place} has no {column!r} field; it has {', '.join(map(repr, record))}. "
                        "Name the columns with text_column= and label_column=."
                    )
            text, label = record[text_column], record.get(label_column, "")
            _check_text(text, place)
            if label_column is None:
                label = None
            elif label is None or (isinstance(label, str) and not label.strip()):
                raise KftError(f"{place}: the label ({label_column!r}) is empty.")
            if multi_label and isinstance(label, str):
                label = [part.strip() for part in label.split(LABEL_SEPARATOR) if part.strip()]
            rows.texts.append(str(text))
            rows.labels.append(label)
            rows.where.append(place)
    if not rows.texts:
        raise KftError(f"Data file {path} holds no rows.")
    return rows


def json_records(handle, path):
    """`(line number, object)` for each non-blank line of a JSON Lines file;
    a broken line or one that is not an object is an error naming it."""
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise KftError(f"{path}, line {number} is not valid JSON ({error.msg}).") from None
        if not isinstance(record, dict):
            raise KftError(f"{path}, line {number} is not a JSON object.")
        yield number, record


def table_records(handle, path, kind, needed, hint):
    """`(line number, row dict)` for each row of a CSV (`kind="csv"`) or TSV file.

    A header without a `needed` column is an error listing the file's columns,
    followed by `hint` (which arguments name the columns); a row with more
    cells than the header is an error naming its line.
    """
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == "tsv" else {}
    reader = csv.DictReader(handle, **options)
    header = reader.fieldnames or []
    missing = [column for column in needed if column not in header]
    if missing:
        raise KftError(
            f"{path}, line 1 (header) has no column {', '.join(map(repr, missing))}; its "
            f"columns are {', '.join(map(repr, header))}. {hint}"
        )
    for record in reader:
        if None in record:  # More cells than header columns.
            raise KftError(f"{path}, line {reader.line_num} has more cells than the header.")
        yield reader.line_num, record


def _check_text(text, place):
    if not isinstance(text, str) or not text.strip():
        raise KftError(f"{place}: the text is empty; remove the row or fill it in.")


def _text_data(rows, held, class_names, validation_split, test_split, batch_size, seed,
               balance, multi_label, group_by_length=True):
    if balance not in _BALANCE:
        raise KftError(f"balance must be None, 'class_weight' or 'oversample', got {balance!r}.")
    if balance == "class_weight" and multi_label:
        raise KftError("balance='class_weight' needs one label per text; use 'oversample'.")
    if int(batch_size) < 1:
        raise KftError(f"batch_size must be at least 1, got {batch_size}.")
    for name, fraction in (("validation_split", validation_split), ("test_split", test_split)):
        if not 0 <= fraction < 1:
            raise KftError(f"{name} must be in [0, 1), got {fraction}.")
    if class_names is None:
        class_names = _class_names(rows.labels, multi_label)
    class_names = [str(name) for name in class_names]
    targets = _targets(rows, class_names, multi_label)
    present = np.flatnonzero(targets.any(axis=0)) if multi_label else np.unique(targets)
    if len(present) < 2:
        raise KftError(
            f"{_source(rows)}: its {len(rows)} row(s) hold only "
            f"{', '.join(repr(class_names[i]) for i in present) or 'no class'}; "
            "a classifier needs at least two classes."
        )
    texts = np.array(rows.texts, dtype=object)

    strata = _strata(targets, multi_label)
    rng = np.random.default_rng(seed)
    parts = {}
    remaining = np.arange(len(texts))
    for name, fraction in (("test", test_split), ("validation", validation_split)):
        if name in held:
            parts[name] = (np.array(held[name].texts, dtype=object),
                           _targets(held[name], class_names, multi_label))
        elif fraction > 0:
            share = fraction * len(texts) / len(remaining)
            taken = stratified_holdout(strata[remaining], share, rng)
            if not len(taken):
                raise KftError(
                    f"{name}_split={fraction} of {len(texts)} rows holds out no row (every "
                    f"class keeps one for training); add rows, raise it, or set it to 0."
                )
            parts[name] = (texts[remaining[taken]], targets[remaining[taken]])
            remaining = np.delete(remaining, taken)
    train_texts, train_targets = texts[remaining], targets[remaining]

    class_weight = None
    if balance == "class_weight":
        class_weight = class_weights(train_targets, len(class_names))
    elif balance == "oversample":
        order = _oversampled(_strata(train_targets, multi_label), rng)
        train_texts, train_targets = train_texts[order], train_targets[order]

    def batches(texts, targets, shuffle_seed=None):
        if group_by_length:
            return length_grouped_batches(texts, targets, int(batch_size), shuffle_seed)
        dataset = tf.data.Dataset.from_tensor_slices((texts.astype(str), targets))
        if shuffle_seed is not None:
            dataset = dataset.shuffle(len(texts), seed=shuffle_seed, reshuffle_each_iteration=True)
        return dataset.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)

    def optional(name):
        if name not in parts or not len(parts[name][0]):
            return None, 0
        return batches(*parts[name]), len(parts[name][0])

    validation, num_validation = optional("validation")
    test, num_test = optional("test")
    return TextData(
        train=batches(train_texts, train_targets, shuffle_seed=seed),
        validation=validation,
        test=test,
        class_names=class_names,
        num_train=len(train_texts),
        num_validation=num_validation,
        num_test=num_test,
        batch_size=int(batch_size),
        multi_label=bool(multi_label),
        class_weight=class_weight,
    )


def length_grouped_batches(texts, targets, batch_size, seed=None):
    """Batches of texts of similar length, as Hugging Face's `group_by_length` makes them.

    With a `seed` (training), every epoch draws a new random order, cuts it
    into mega-batches of 50 batches, sorts each mega-batch by length and
    cuts it into batches, then shuffles the batches: batches hold texts of
    similar length, yet their members and their order change every epoch,
    and the number of batches is the plain `ceil(N / batch_size)`. Without a
    seed (validation, test) the texts are sorted by length once, in a fixed
    order. Length is counted in characters, which orders texts as their
    token counts do closely enough for grouping; the model pads each batch
    to its own longest text (`kft.models.dynamic_padding`).

    Args:
        texts: an array of strings.
        targets: their labels, an array with one row per text.
        batch_size: texts per batch.
        seed: the shuffling seed, or `None` for a fixed order.

    Returns:
        A `tf.data.Dataset` of `(tf.string [B], targets [B, ...])` batches.
    """
    lengths = np.array([len(text) for text in texts], dtype="int32")
    count = -(-len(texts) // batch_size)
    if seed is None:
        order = np.argsort(lengths, kind="stable")
        dataset = tf.data.Dataset.from_tensor_slices((texts[order].astype(str), targets[order]))
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def longest_first(text, target, length):
        order = tf.argsort(length, direction="DESCENDING", stable=True)
        return tf.gather(text, order), tf.gather(target, order), tf.gather(length, order)

    dataset = tf.data.Dataset.from_tensor_slices((texts.astype(str), targets, lengths))
    dataset = dataset.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(_MEGA_BATCHES * batch_size).map(longest_first).unbatch()
    dataset = dataset.batch(batch_size).map(lambda text, target, _: (text, target))
    dataset = dataset.shuffle(count, seed=seed + 1, reshuffle_each_iteration=True)
    # unbatch() loses the count; Keras' progress bar and schedules want it.
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(count))
    return dataset.prefetch(tf.data.AUTOTUNE)


def _source(rows):
    """Where `rows` came from: the file of their first row, or the lists."""
    source = re.sub(r", (line|item) \d+$", "", rows.where[0]) if rows.where else "the data"
    return source[:1].upper() + source[1:]


def _class_names(labels, multi_label):
    values = {str(v) for label in labels for v in (label if multi_label else [label])}
    if all(_is_integer(v) for v in values):
        return [str(v) for v in sorted(int(v) for v in values)]
    return sorted(values)


def _is_integer(text):
    try:
        int(text)
        return True
    except ValueError:
        return False


def _targets(rows, class_names, multi_label):
    index = {name: i for i, name in enumerate(class_names)}

    def lookup(value, place):
        key = str(value)
        if key in index:
            return index[key]
        # An integer label is a class index when the classes have names.
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if 0 <= value < len(class_names):
                return int(value)
        raise KftError(
            f"{place}: label {value!r} is not one of the classes "
            f"{', '.join(map(repr, class_names))}."
        )

    if multi_label:
        targets = np.zeros((len(rows), len(class_names)), np.float32)
        for row, (label, place) in enumerate(zip(rows.labels, rows.where)):
            if not isinstance(label, (list, tuple)):
                raise KftError(f"{place}: a multi-label row needs a list of labels, got {label!r}.")
            for value in label:
                targets[row, lookup(value, place)] = 1.0
        return targets
    return np.array([lookup(v, p) for v, p in zip(rows.labels, rows.where)], np.int32)


def _strata(targets, multi_label):
    # Multi-label rows are stratified by their first label.
    return targets.argmax(axis=-1) if multi_label else targets


def _oversampled(strata, rng):
    """Row order with every class repeated up to the largest class's size."""
    values, counts = np.unique(strata, return_counts=True)
    order = []
    for value in values:
        members = np.flatnonzero(strata == value)
        extra = rng.choice(members, counts.max() - len(members), replace=True)
        order.append(np.concatenate([members, extra]))
    return np.concatenate(order)
