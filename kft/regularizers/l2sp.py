"""L2-SP: keep the weights that train near where the stage started them.

`alpha/2 * sum ||w - w0||^2` over the pretrained weights that train, plus
`beta/2 * sum ||w||^2` over the new head's weights (Li, Grandvalet and Davoine,
"Explicit Inductive Bias for Transfer Learning with Convolutional Networks",
ICML 2018). `w0` is each weight's value when the regulariser is bound (the
stage's start), held in a non-trainable variable.

Frozen weights get no term: they cannot move. For a kft LoRA layer the
pretrained weight that trains is its kernel, moved by the adapter, so the term
is on the kernel the layer computes with, not on the factors `A` and `B`
(whose distance from a random start means nothing): `||scale * A @ B - D0||^2`
for LoRA (the base stays frozen, so this is exactly the kernel's distance),
DoRA's `m * V / ||V||` for DoRA. On a head-only stage nothing pretrained
trains: L2-SP is the head's `beta` term alone (weight decay on the head),
which needs no backbone, so such a stage still trains on cached features.

Example:
```python
kft.freeze(model); kft.unfreeze(model, "groups:2")
trainer = kft.regularizers.Regularized(
    model, kft.regularizers.L2SP(model, alpha=0.01, beta=0.001))
```
"""

import keras
from keras import ops

from kft.errors import KftError
from kft.internal.checks import is_number
from kft.model_tree import head_layers
from kft.model_tree import layer_tree
from kft.peft.lora import lora_layers
from kft.regularizers.base import Regularizer
from kft.regularizers.reference import to_numpy
from kft.select import resolve


class L2SP(Regularizer):
    """`alpha/2 * ||w - w0||^2` on pretrained weights, `beta/2 * ||w||^2` on the head.

    Args:
        model: the model to bind to now (after its freezing), or `None`.
        alpha: strength of the pull towards the start weights (> 0).
        beta: strength of the plain L2 penalty on the head (>= 0).
        head: the new head, whose weights get `beta` instead of `alpha`, in
            kft's selection language: `"auto"` (the model's head, `head_*`
            layers or a keras-hub task's layers above its backbone, if it has
            one), `None` (no new head: a classifier trained further on its
            own classes), or a selection such as `"head_dense"`.

    Attributes:
        pretrained_paths: the terms pulled towards their start (variable
            paths; `<layer path>:adapted_kernel` for LoRA layers), once bound.
        head_paths: the head's variables under `beta`, once bound.
    """

    name = "l2sp"

    def __init__(self, model=None, alpha=0.01, beta=0.0, head="auto"):
        if not (is_number(alpha) and alpha > 0):
            raise KftError(f"L2SP alpha must be a number > 0, got {alpha!r}.")
        if not (is_number(beta) and beta >= 0):
            raise KftError(f"L2SP beta must be a number >= 0, got {beta!r}.")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.head = head
        self.pretrained_paths = []
        self.head_paths = []
        super().__init__(model)

    def __repr__(self):
        return f"L2SP(alpha={self.alpha:g}, beta={self.beta:g})"

    def _bind(self, model, reference):
        head_ids = self._head_variable_ids(model)
        trainable = model.trainable_variables
        trainable_ids = {id(v) for v in trainable}
        terms, covered = [], set()
        for path, layer in lora_layers(model):
            if layer.merged_adapter is not None or layer.active_adapter not in layer.adapter_names:
                continue
            variables = list(layer.adapter_variables(layer.active_adapter).values())
            if not all(id(v) in trainable_ids for v in variables):
                continue
            covered.update(id(v) for v in variables)
            dora = layer.adapter_spec(layer.active_adapter).dora
            terms.append((f"{path}:adapted_kernel",
                          layer.adapted_kernel if dora else layer.delta_kernel))
        head = []
        for variable in trainable:
            if id(variable) in covered:
                continue
            if id(variable) in head_ids:
                head.append(variable)
            else:
                terms.append((variable.path, lambda v=variable: v))
        keys = [f"{i}:{path}" for i, (path, _) in enumerate(terms)]
        if reference is not None and sorted(reference) != sorted(keys):
            raise KftError(
                "The saved L2-SP start weights do not fit the model's trainable weights; "
                "the model or the stage's selection changed since the stage started."
            )
        self._terms = []
        for key, (_, current) in zip(keys, terms):
            value = current()
            start = reference[key] if reference is not None else ops.convert_to_numpy(value)
            # A copy, not trainable, in the weight's own dtype (bfloat16 stays so).
            self._terms.append((current, keras.Variable(
                start, dtype=keras.backend.standardize_dtype(value.dtype), trainable=False,
                name="l2sp_start")))
        self._keys = keys
        self._head = head
        self.pretrained_paths = [path for path, _ in terms]
        self.head_paths = [v.path for v in head]

    def _head_variable_ids(self, model):
        head = self.head
        if isinstance(head, str) and head == "auto":
            head = "head" if head_layers(model) else None
        if head is None:
            return set()
        return set(resolve(head, layer_tree(model)).variables)

    def reference_arrays(self):
        self._require_bound()
        return {key: to_numpy(start) for key, (_, start) in zip(self._keys, self._terms)}

    def penalty(self, inputs, outputs, extras=None, sample_weight=None):
        self._require_bound()
        pull = ops.zeros((), "float32")
        for current, start in self._terms:
            difference = ops.subtract(ops.cast(current(), "float32"), ops.cast(start, "float32"))
            pull = ops.add(pull, ops.sum(ops.square(difference)))
        total = ops.multiply(pull, self.alpha / 2)
        if self.beta and self._head:
            size = ops.zeros((), "float32")
            for variable in self._head:
                size = ops.add(size, ops.sum(ops.square(ops.cast(variable, "float32"))))
            total = ops.add(total, ops.multiply(size, self.beta / 2))
        return total
