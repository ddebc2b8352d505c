"""OutputKL: keep the model's predictions near the pretrained model's.

`weight * KL(p_pretrained || p_model)` per batch, the KL divergence summed over
the output classes and averaged over the examples (over the positions of a
sequence output, where the sample weights, a padding mask, are above zero).
For a model whose output space the pretrained model shares: a classifier
trained further on the same classes, a language model. The pretrained outputs
come from the model itself with its LoRA adapters off, or from a frozen copy
(`kft.regularizers.reference`).

Example:
```python
kl = kft.regularizers.OutputKL(model, weight=0.1)  # LoRA: adapters-off reference
trainer = kft.regularizers.Regularized(model, kl)
```
"""

import keras
from keras import ops

from kft.errors import KftError
from kft.internal.checks import is_number
from kft.regularizers.base import masked_mean
from kft.regularizers.reference import Reference
from kft.regularizers.reference import ReferenceRegularizer
from kft.regularizers.reference import check_kind

# What the model's output holds: probabilities over the last axis (softmax),
# their logits, independent probabilities (sigmoid), or their logits.
OUTPUTS = ("auto", "softmax", "logits", "sigmoid", "sigmoid_logits")
_EPSILON = 1e-7


class OutputKL(ReferenceRegularizer):
    """`weight * KL(p_pretrained || p_model)`, the mean over a batch.

    Args:
        model: the model to bind to now, or `None`.
        weight: the penalty's weight (> 0).
        output: what the model outputs (`OUTPUTS`): `"auto"` reads it from
            the output layer's activation (softmax, sigmoid, or none: logits
            of a softmax, of a sigmoid for one unit).
        reference: `"auto"`, `"adapters_off"` or `"copy"`
            (`kft.regularizers.reference`).
    """

    name = "kl"

    def __init__(self, model=None, weight=0.1, output="auto", reference="auto"):
        if not (is_number(weight) and weight > 0):
            raise KftError(f"OutputKL weight must be a number > 0, got {weight!r}.")
        if output not in OUTPUTS:
            raise KftError(f"OutputKL output must be one of {', '.join(OUTPUTS)}, got {output!r}.")
        self.weight = float(weight)
        self.output = output
        self.reference = check_kind(reference)
        super().__init__(model)

    def __repr__(self):
        return f"OutputKL(weight={self.weight:g})"

    def _bind(self, model, reference):
        if len(model.outputs or ()) != 1:
            raise KftError(
                f"OutputKL needs a model with one output; {model.name!r} has "
                f"{len(model.outputs or ())}."
            )
        self.output_kind = self.output if self.output != "auto" else output_kind(model)
        self._reference = Reference(model, self.reference, arrays=reference)

    def penalty(self, inputs, outputs, extras=None, sample_weight=None):
        self._require_bound()
        pretrained = self._reference.outputs(inputs)
        divergence = kl_divergence(pretrained, outputs, self.output_kind)
        return ops.multiply(masked_mean(divergence, sample_weight), self.weight)


def kl_divergence(p_outputs, q_outputs, kind):
    """`KL(p || q)` per example (summed over the last axis) of two model outputs."""
    p = ops.cast(p_outputs, "float32")
    q = ops.cast(q_outputs, "float32")
    if kind in ("softmax", "logits"):
        if kind == "logits":
            log_p, log_q = ops.log_softmax(p, axis=-1), ops.log_softmax(q, axis=-1)
        else:
            log_p, log_q = _log(p), _log(q)
        return ops.sum(ops.multiply(ops.exp(log_p), ops.subtract(log_p, log_q)), axis=-1)
    if kind == "sigmoid_logits":
        p, q = ops.sigmoid(p), ops.sigmoid(q)
    # Independent Bernoulli outputs: the KL of each unit, summed.
    terms = ops.add(
        ops.multiply(p, ops.subtract(_log(p), _log(q))),
        ops.multiply(1.0 - p, ops.subtract(_log(1.0 - p), _log(1.0 - q))),
    )
    return ops.sum(terms, axis=-1)


def output_kind(model):
    """What `model`'s single output holds, from its output layer (see `OUTPUTS`)."""
    layer = model.outputs[0]._keras_history.operation
    # kft's LoRA layers keep the layer's activation as `output_activation`.
    activation = getattr(layer, "output_activation", getattr(layer, "activation", None))
    if isinstance(layer, keras.layers.Softmax) or activation is keras.activations.softmax:
        return "softmax"
    if activation is keras.activations.sigmoid:
        return "sigmoid"
    if activation not in (None, keras.activations.linear):
        raise KftError(
            f"OutputKL cannot tell what {model.name!r} outputs (its output layer "
            f"{layer.name!r} applies {getattr(activation, '__name__', activation)}); "
            f"pass output= one of {', '.join(OUTPUTS[1:])}."
        )
    units = model.outputs[0].shape[-1]
    return "sigmoid_logits" if units == 1 else "logits"


def _log(x):
    return ops.log(ops.clip(x, _EPSILON, 1.0))
