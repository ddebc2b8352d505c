"""Entity-level precision, recall and F1 for BIO-tagged sequences.

A named-entity tagger is judged on whole entities, not on tags: an entity
counts as found only when its span and its type both match exactly (the
CoNLL shared tasks' `conlleval` and `seqeval`'s default mode). Tags follow
the IOB2 scheme (`B-PER`, `I-PER`, `O`); as in `conlleval`, an `I-X` that
does not continue an `X` entity starts a new one, so IOB1 data scores the
same way.

Two implementations of the same rule: `entity_scores` on tag strings (the
readable reference, with per-type figures), and the streaming Keras metric
`EntityF1` on label ids inside `model.fit` and `model.evaluate`. Tests hold
them equal on random sequences.
"""

import collections
import dataclasses

import keras
from keras import ops

from kft.errors import KftError

OUTSIDE = "O"
_PREFIXES = ("B-", "I-")


def split_tag(tag):
    """Splits a BIO tag into `(prefix, type)`: `"B-PER"` -> `("B", "PER")`.

    Args:
        tag: `"O"` or `"B-TYPE"` / `"I-TYPE"` with a non-empty type.

    Returns:
        `("O", None)` for `"O"`, else `("B" or "I", type)`.

    Raises:
        KftError: the tag is not in the BIO scheme.
    """
    if tag == OUTSIDE:
        return OUTSIDE, None
    if isinstance(tag, str) and tag[:2] in _PREFIXES and len(tag) > 2:
        return tag[0], tag[2:]
    raise KftError(
        f"Tag {tag!r} is not a BIO tag: use 'O' or 'B-TYPE' / 'I-TYPE' "
        "(e.g. B-PER, I-PER)."
    )


def entity_spans(tags):
    """The entities in one tagged sentence.

    Args:
        tags: the sentence's BIO tags, one per word.

    Returns:
        A list of `(type, start, end)` with `end` exclusive, in order.

    Example:
    ```python
    entity_spans(["B-PER", "I-PER", "O", "I-LOC"])
    # [("PER", 0, 2), ("LOC", 3, 4)]
    ```
    """
    spans, current = [], None
    for index, tag in enumerate(list(tags) + [OUTSIDE]):
        prefix, kind = split_tag(tag)
        continues = current is not None and prefix == "I" and kind == current[0]
        if current is not None and not continues:
            spans.append((current[0], current[1], index))
            current = None
        if prefix != OUTSIDE and not continues:
            current = (kind, index)
    return spans


@dataclasses.dataclass
class TypeScores:
    """Precision, recall and F1 over one entity type (or all of them).

    Attributes:
        precision: correct entities / predicted entities (0 when none predicted).
        recall: correct entities / true entities (0 when there are none).
        f1: their harmonic mean (0 when both are 0).
        support: the number of true entities.
        predicted: the number of predicted entities.
        correct: the number of predicted entities that match a true one exactly.
    """

    precision: float
    recall: float
    f1: float
    support: int
    predicted: int
    correct: int


@dataclasses.dataclass
class EntityScores(TypeScores):
    """`TypeScores` over all entities (micro average), plus `by_type`.

    Attributes:
        by_type: entity type -> `TypeScores`, sorted by type.
    """

    by_type: dict = dataclasses.field(default_factory=dict)

    def table(self):
        """The scores as a text table, one row per type and a total row."""
        rows = [("type", "precision", "recall", "f1", "support")]
        for name, scores in list(self.by_type.items()) + [("all", self)]:
            rows.append((name, f"{scores.precision:.4f}", f"{scores.recall:.4f}",
                         f"{scores.f1:.4f}", str(scores.support)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                      for i, (cell, w) in enumerate(zip(row, widths)))
            for row in rows
        )


def entity_scores(true_tags, predicted_tags):
    """Entity-level precision, recall and F1 (exact span and type match).

    Args:
        true_tags: the gold tags: a list of sentences, each a list of BIO tags.
        predicted_tags: the predicted tags, the same shape.

    Returns:
        An `EntityScores`: micro-averaged figures and `by_type`.

    Raises:
        KftError: the two differ in the number of sentences or of words in a
            sentence, or a tag is not in the BIO scheme.

    Example:
    ```python
    scores = kft.evaluation.entities.entity_scores(
        [["B-PER", "I-PER", "O"]], [["B-PER", "O", "O"]])
    scores.f1  # 0.0: the predicted entity is too short
    ```
    """
    true_tags, predicted_tags = list(true_tags), list(predicted_tags)
    if len(true_tags) != len(predicted_tags):
        raise KftError(
            f"entity_scores got {len(true_tags)} true and {len(predicted_tags)} "
            "predicted sentences; give one prediction per sentence."
        )
    counts = collections.defaultdict(lambda: [0, 0, 0])  # support, predicted, correct
    for number, (truth, guess) in enumerate(zip(true_tags, predicted_tags)):
        if len(truth) != len(guess):
            raise KftError(
                f"Sentence {number} has {len(truth)} true tags but {len(guess)} "
                "predicted ones; give one tag per word."
            )
        true_spans, guessed_spans = set(entity_spans(truth)), set(entity_spans(guess))
        for kind, _, _ in true_spans:
            counts[kind][0] += 1
        for kind, _, _ in guessed_spans:
            counts[kind][1] += 1
        for kind, _, _ in true_spans & guessed_spans:
            counts[kind][2] += 1
    by_type = {kind: _scores(*counts[kind]) for kind in sorted(counts)}
    total = _scores(*(sum(column) for column in zip(*counts.values()))) if counts else _scores(0, 0, 0)
    return EntityScores(**dataclasses.asdict(total), by_type=by_type)


def _scores(support, predicted, correct):
    precision = correct / predicted if predicted else 0.0
    recall = correct / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return TypeScores(precision, recall, f1, support, predicted, correct)


def check_tag_layout(tags):
    """Checks that `tags` is laid out the way `EntityF1` reads label ids.

    kft lays out a tag set as `["O", "B-T1", "I-T1", "B-T2", "I-T2", ...]`
    (`kft.data.token_labels.tag_names` builds it), so a label id says its
    entity type, `(id + 1) // 2`, and whether it begins an entity (odd ids).

    Args:
        tags: a list of tag names.

    Raises:
        KftError: `tags` is not in that layout.
    """
    tags = list(tags)
    types = [tags[i][2:] for i in range(1, len(tags), 2)]
    expected = [OUTSIDE] + [f"{p}-{t}" for t in types for p in ("B", "I")]
    if tags != expected or len(set(types)) != len(types) or any(not t for t in types):
        raise KftError(
            f"Tags {tags} are not in kft's layout ['O', 'B-T1', 'I-T1', 'B-T2', "
            "'I-T2', ...]; build the list with kft.data.token_labels.tag_names(...)."
        )


@keras.saving.register_keras_serializable(package="kft")
class EntityF1(keras.metrics.Metric):
    """Streaming entity-level F1 (or precision, or recall) for token classifiers.

    Counts exact span+type matches between the label ids and the predicted
    scores' argmax, over the positions with a label: ids of -1 (a
    `TokenClassifier`'s later wordpieces, special tokens and padding) and
    positions of sample weight 0 are skipped, so words next to each other in
    the sentence are next to each other here. Label ids are in kft's tag layout (see
    `check_tag_layout`): 0 is `O`, `2k - 1` is `B-` and `2k` is `I-` of
    type `k`.

    Args:
        kind: `"f1"`, `"precision"` or `"recall"`.
        name: the metric's name (`val_` is prefixed for validation).
        dtype: the metric's dtype.

    Example:
    ```python
    model.compile(loss=..., metrics=[kft.evaluation.entities.EntityF1()])
    ```
    """

    def __init__(self, kind="f1", name="entity_f1", dtype=None):
        super().__init__(name=name, dtype=dtype)
        if kind not in ("f1", "precision", "recall"):
            raise KftError(f"EntityF1 kind must be 'f1', 'precision' or 'recall', got {kind!r}.")
        self.kind = kind
        # Higher is better: Keras' callbacks (and kft's best checkpoint) read it.
        self._direction = "up"
        self.true_count = self.add_variable((), initializer="zeros", name="true_count")
        self.predicted_count = self.add_variable((), initializer="zeros", name="predicted_count")
        self.correct_count = self.add_variable((), initializer="zeros", name="correct_count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "int32")
        y_pred = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
        valid = y_true >= 0
        if sample_weight is not None:
            valid = valid & (ops.reshape(sample_weight, ops.shape(y_true)) > 0)
        true_ids = _compact(y_true, valid)
        predicted_ids = _compact(y_pred, valid)
        true_start, true_type, true_end = _entity_marks(true_ids)
        predicted_start, predicted_type, predicted_end = _entity_marks(predicted_ids)

        # A true entity is found when, at every one of its positions, the
        # prediction starts, continues and ends an entity of the same type
        # exactly where it does.
        agree = (
            (true_start == predicted_start)
            & (true_type == predicted_type)
            & (true_end == predicted_end)
        )
        inside = true_type > 0
        # Entity numbers over the flattened batch (an entity never crosses a
        # row: every row starts outside one); 0 for positions outside.
        flat_start = ops.reshape(ops.cast(true_start, "int32"), (-1,))
        entity = ops.where(ops.reshape(inside, (-1,)), ops.cumsum(flat_start), 0)
        misses = ops.cast(ops.reshape(inside & ~agree, (-1,)), "int32")
        size = ops.shape(entity)[0] + 1
        missed_per_entity = ops.segment_sum(misses, entity, num_segments=size)
        true_entities = ops.sum(flat_start)
        missed_entities = ops.sum(ops.cast(missed_per_entity[1:] > 0, "int32"))

        self.true_count.assign_add(ops.cast(true_entities, self.dtype))
        self.predicted_count.assign_add(ops.cast(ops.sum(ops.cast(predicted_start, "int32")), self.dtype))
        self.correct_count.assign_add(ops.cast(true_entities - missed_entities, self.dtype))

    def result(self):
        precision = ops.divide_no_nan(self.correct_count, self.predicted_count)
        recall = ops.divide_no_nan(self.correct_count, self.true_count)
        if self.kind == "precision":
            return precision
        if self.kind == "recall":
            return recall
        return ops.divide_no_nan(2 * precision * recall, precision + recall)

    def get_config(self):
        return {"kind": self.kind, "name": self.name, "dtype": self.dtype}


def _compact(ids, valid):
    """Moves the valid positions of each row to its front, in order; `O` after."""
    length = ops.shape(ids)[-1]
    positions = ops.arange(length, dtype="int32")[None, :]
    order = ops.argsort(ops.where(valid, positions, positions + length), axis=-1)
    moved = ops.take_along_axis(ids, order, axis=-1)
    return ops.where(ops.take_along_axis(valid, order, axis=-1), moved, 0)


def _entity_marks(ids):
    """Per position: starts an entity, entity type (0 outside), ends an entity."""
    kind = (ids + 1) // 2
    begins = (ids % 2) == 1
    previous = ops.pad(kind, ((0, 0), (1, 0)))[:, :-1]
    start = (kind > 0) & (begins | (previous != kind))
    following_start = ops.pad(start, ((0, 0), (0, 1)), constant_values=True)[:, 1:]
    following_kind = ops.pad(kind, ((0, 0), (0, 1)))[:, 1:]
    continued = (following_kind > 0) & ~following_start
    end = (kind > 0) & ~continued
    return start, kind, end
