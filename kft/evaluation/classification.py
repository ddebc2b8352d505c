"""Classification reports: accuracy, precision, recall and F1 per class and macro.

Keras' metrics run per batch during training; the report here is computed
once over a whole held-out set from the model's predictions, like
scikit-learn's `classification_report`, and adds the confusion matrix.
"""

import dataclasses

import numpy as np

from kft.errors import KftError


@dataclasses.dataclass
class ClassificationReport:
    """Metrics of a classifier on one labelled set.

    Attributes:
        class_names: the classes, in label-index order.
        accuracy: fraction of texts/images whose predicted class is right
            (multi-label: whose predicted label set is exactly right).
        precision, recall, f1: per class, arrays in class order.
        support: true examples per class.
        confusion: `[true, predicted]` counts (single-label only, else `None`).
    """

    class_names: list
    accuracy: float
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    confusion: np.ndarray | None

    @property
    def macro_precision(self):
        return float(np.mean(self.precision))

    @property
    def macro_recall(self):
        return float(np.mean(self.recall))

    @property
    def macro_f1(self):
        return float(np.mean(self.f1))

    def as_dict(self):
        """A JSON-ready dict."""
        return {
            "accuracy": self.accuracy,
            "macro_precision": self.macro_precision,
            "macro_recall": self.macro_recall,
            "macro_f1": self.macro_f1,
            "per_class": {
                name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for name, p, r, f, s in zip(
                    self.class_names, self.precision, self.recall, self.f1, self.support
                )
            },
            "confusion_matrix": None if self.confusion is None else self.confusion.tolist(),
        }

    def format(self):
        """A table: one row per class, then macro averages and accuracy."""
        width = max(len("macro avg"), *(len(str(name)) for name in self.class_names))
        lines = [f"{'':{width}}  precision  recall     f1  support"]
        for name, p, r, f, s in zip(
            self.class_names, self.precision, self.recall, self.f1, self.support
        ):
            lines.append(f"{str(name):{width}}  {p:9.4f}  {r:6.4f}  {f:6.4f}  {int(s):7d}")
        lines.append(
            f"{'macro avg':{width}}  {self.macro_precision:9.4f}  {self.macro_recall:6.4f}  "
            f"{self.macro_f1:6.4f}  {int(self.support.sum()):7d}"
        )
        lines.append(f"{'accuracy':{width}}  {self.accuracy:.4f}")
        return "\n".join(lines)


def report(labels, probabilities, class_names, multi_label=False, threshold=0.5):
    """Computes a `ClassificationReport` from labels and predicted probabilities.

    Args:
        labels: int class indices `[n]`, or multi-hot `[n, classes]` for
            `multi_label`.
        probabilities: `[n, classes]` model outputs (an argmax picks the
            class; for `multi_label`, every class above `threshold`).
        class_names: the classes, in label-index order.
        multi_label: labels are multi-hot.
        threshold: the probability above which a label is predicted
            (multi-label only).

    Returns:
        A `ClassificationReport`. A class never predicted has precision 0,
        a class without examples recall 0 (and F1 0), as scikit-learn's
        `zero_division=0`.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    num_classes = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise KftError(
            f"The model predicts {probabilities.shape[-1]} classes but the data has "
            f"{num_classes} ({', '.join(map(str, class_names))})."
        )
    if multi_label:
        truth = labels.astype(bool)
        predicted = probabilities > threshold
        true_positives = (truth & predicted).sum(axis=0)
        predicted_counts, support = predicted.sum(axis=0), truth.sum(axis=0)
        accuracy = float(np.mean(np.all(truth == predicted, axis=1)))
        confusion = None
    else:
        predicted = probabilities.argmax(axis=-1)
        labels = labels.astype(np.int64).reshape(-1)
        confusion = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(confusion, (labels, predicted), 1)
        true_positives = np.diag(confusion)
        predicted_counts, support = confusion.sum(axis=0), confusion.sum(axis=1)
        accuracy = float(true_positives.sum() / max(1, len(labels)))
    precision = _divide(true_positives, predicted_counts)
    recall = _divide(true_positives, support)
    f1 = _divide(2 * precision * recall, precision + recall)
    return ClassificationReport(
        class_names=list(class_names), accuracy=accuracy, precision=precision,
        recall=recall, f1=f1, support=np.asarray(support), confusion=confusion,
    )


def evaluate(model, dataset, class_names, multi_label=False, threshold=0.5):
    """Predicts `dataset` with `model` and reports against its labels.

    Args:
        model: a classifier whose outputs are `[batch, classes]` probabilities.
        dataset: batches of `(inputs, labels)` or `(inputs, labels, weights)`
            in a fixed order (a validation or test set).
        class_names, multi_label, threshold: as for `report`.

    Returns:
        A `ClassificationReport`.
    """
    labels = np.concatenate([np.asarray(batch[1]) for batch in dataset])
    probabilities = model.predict(dataset.map(lambda x, *rest: x), verbose=0)
    return report(labels, probabilities, class_names, multi_label, threshold)


def plot_confusion_matrix(classification_report, target, title="Confusion matrix"):
    """Writes the confusion matrix as a PNG: counts, coloured by row share.

    Args:
        classification_report: a single-label `ClassificationReport`.
        target: the PNG path.
        title: the plot's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    matrix = classification_report.confusion
    if matrix is None:
        raise KftError("A multi-label report has no confusion matrix.")
    names = classification_report.class_names
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(14, 2 + 0.6 * len(names))
    figure, axis = pyplot.subplots(figsize=(side, side))
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(names) <= 30:
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center",
                      color="white" if shares[row, column] > 0.5 else "black", fontsize=8)
    axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title(f"{title} (accuracy {classification_report.accuracy:.3f})")
    figure.tight_layout()
    figure.savefig(target, dpi=100)
    pyplot.close(figure)


def _divide(numerator, denominator):
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator),
                     where=denominator > 0)
