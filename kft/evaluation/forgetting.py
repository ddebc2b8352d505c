"""Forgetting: how much of what the pretrained model knew fine-tuning cost.

A reference set (REF) is one the pretrained model handles well and the
fine-tuning data does not train. kft scores the model on it before the
stages and the fine-tuned model again after them:

- a classifier: a linear probe, one new softmax layer for REF's classes
  trained on the frozen features below the head (`linear_probe` with
  `new_head=True`); the score is its accuracy on REF's held-out set
  (test, else validation, which also stops the probe's training early: the
  same small optimism before and after);
- a causal LM: perplexity on REF's text (every split: none of it trains).

`Forgetting.lost` is how much worse the fine-tuned model is: accuracy points
lost, or the perplexity's rise. A regulariser toward the pretrained model
(`Stage(regularize="l2sp:...")`, `"kl:..."`) is meant to keep it small.
"""

import dataclasses
import math
import time

from kft.errors import KftError
from kft.evaluation.linear_probe import linear_probe

ACCURACY = "accuracy"
PERPLEXITY = "perplexity"


@dataclasses.dataclass
class Probe:
    """One score of the model on the reference set.

    Attributes:
        measure: `"accuracy"` (a linear probe; higher is better) or
            `"perplexity"` (a causal LM; lower is better).
        value: the score.
        split: the REF split scored (`"test"`, `"validation"`, or `"all"`).
        seconds: the time it took.
    """

    measure: str
    value: float
    split: str
    seconds: float

    def as_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Forgetting:
    """The reference score before and after fine-tuning.

    Attributes:
        reference: what REF is (a name or path, for the report).
        before, after: the two `Probe`s.
    """

    reference: str
    before: Probe
    after: Probe

    @property
    def lost(self):
        """How much worse after than before: accuracy lost (before - after)
        or perplexity gained (after - before); negative where it improved."""
        if self.before.measure == PERPLEXITY:
            return self.after.value - self.before.value
        return self.before.value - self.after.value

    def as_dict(self):
        return {"reference": self.reference, "measure": self.before.measure,
                "split": self.before.split, "before": self.before.value,
                "after": self.after.value, "lost": self.lost,
                "before_seconds": self.before.seconds, "after_seconds": self.after.seconds}


def probe(model, reference, seed=0):
    """Scores what `model` knows of the reference set.

    Args:
        model: a classifier in kft's layout (`head_*` layers, or a keras-hub
            classifier), or a keras-hub causal LM compiled with a
            per-token loss (`kft.text.response_loss()`) and given an
            `InstructionCausalLMPreprocessor` (a run's model is).
        reference: for a classifier, labelled data (`kft.data` object with
            `train`, `validation`/`test` and `class_names`) whose inputs the
            model takes (same image size); for a causal LM, a
            `kft.data.instructions.InstructionData` (plain text, or pairs).

    Returns:
        A `Probe`.

    Raises:
        KftError: the reference set does not fit the model (text for an
            image model, an empty set).

    Example:
    ```python
    model = kft.vision.image_classifier("efficientnet_lite0", 10, image_size=96)
    digits = kft.data.datasets.mnist.image_data(image_size=96)
    before = kft.evaluation.forgetting.probe(model, digits)  # Probe(accuracy, 0.9...)
    ```
    """
    from kft.data.instructions import InstructionData

    began = time.time()
    if isinstance(reference, InstructionData):
        value = perplexity(model, reference)
        return Probe(PERPLEXITY, value, "all", time.time() - began)
    if not getattr(reference, "class_names", None):
        raise KftError("The forgetting reference for a classifier is labelled data "
                       f"(with class_names); got {type(reference).__name__}.")
    multi_label = bool(getattr(reference, "multi_label", False))
    reports = linear_probe(model, reference, seed=seed, new_head=True,
                           loss="binary_crossentropy" if multi_label else
                           "sparse_categorical_crossentropy")
    split = "test" if "test" in reports else "validation"
    return Probe(ACCURACY, float(reports[split].accuracy), split, time.time() - began)


def perplexity(model, reference):
    """A causal LM's perplexity on every split of `reference`'s text.

    Args:
        model: a compiled keras-hub causal LM (its loss the mean loss per
            weighted token) with an `InstructionCausalLMPreprocessor`.
        reference: a `kft.data.instructions.InstructionData`.

    Returns:
        `exp` of the mean loss over the batches, as `float`.
    """
    from kft.evaluation.generation import perplexity as from_loss

    if not getattr(model, "compiled", False):
        raise KftError(f"Model {model.name!r} is not compiled; compile it with "
                       "kft.text.response_loss() before measuring perplexity.")
    total, batches = 0.0, 0
    for split in ("train", "validation", "test"):
        if not reference.examples(split):
            continue
        dataset = reference.batches(model, split=split, shuffle=False)
        count = int(dataset.cardinality())
        loss = model.evaluate(dataset, verbose=0, return_dict=True)["loss"]
        total, batches = total + float(loss) * count, batches + count
    if not batches:
        raise KftError(f"The forgetting reference {reference.source or ''} holds no text.")
    value = from_loss(total / batches)
    return value if math.isfinite(value) else float("inf")
