"""FeatureDistance: keep the backbone's features near the pretrained ones (DELTA-style).

`weight * mean ||f(x) - f0(x)||^2`: `f` is what the head takes (the backbone's
output after the head's weightless pooling, as `split_at_head` cuts the model),
`f0` the same from the pretrained model, the squared distance summed over the
features and averaged over the batch. DELTA (Li et al., ICLR 2019) weights the
channels by how much the new head needs them; this is its unweighted form, for
a classifier whose new head learns on top of a backbone that also trains. The
pretrained features come from the model with its LoRA adapters off, or from a
frozen copy (`kft.regularizers.reference`).

The current features come from the step's own forward pass: `Regularized`
runs the model as its two halves (backbone, head), which share its layers.

Example:
```python
kft.freeze(model); kft.unfreeze(model, "groups:2")
trainer = kft.regularizers.Regularized(
    model, kft.regularizers.FeatureDistance(model, weight=0.1))
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
from kft.regularizers.reference import feature_model
from kft.training.feature_cache import split_at_head


class FeatureDistance(ReferenceRegularizer):
    """`weight * mean ||f(x) - f0(x)||^2` between current and pretrained features.

    Args:
        model: the model to bind to now, or `None`. It needs a head (kft's
            `head_*` layers, or a keras-hub task's layers above its backbone)
            in a functional model.
        weight: the penalty's weight (> 0).
        reference: `"auto"`, `"adapters_off"` or `"copy"`
            (`kft.regularizers.reference`).
    """

    name = "features"

    def __init__(self, model=None, weight=0.1, reference="auto"):
        if not (is_number(weight) and weight > 0):
            raise KftError(f"FeatureDistance weight must be a number > 0, got {weight!r}.")
        self.weight = float(weight)
        self.reference = check_kind(reference)
        super().__init__(model)

    def __repr__(self):
        return f"FeatureDistance(weight={self.weight:g})"

    def _bind(self, model, reference):
        try:
            self._head = split_at_head(model)[1]
            self._backbone = feature_model(model)
        except KftError as error:
            raise KftError(f"FeatureDistance needs the head's input features: {error}") from None
        self._reference = Reference(model, self.reference, arrays=reference, features=True)

    def forward(self, model, inputs, training):
        features = self._backbone(inputs, training=training)
        return self._head(features, training=training), features

    def penalty(self, inputs, outputs, extras=None, sample_weight=None):
        self._require_bound()
        if extras is None:
            # Called without this step's forward pass (compute_loss alone).
            extras = self._backbone(inputs, training=False)
        pretrained = self._reference.features(inputs)
        distance = None
        for current, start in zip(keras.tree.flatten(extras), keras.tree.flatten(pretrained)):
            squares = ops.square(ops.subtract(ops.cast(current, "float32"),
                                              ops.cast(start, "float32")))
            per_example = ops.sum(ops.reshape(squares, (ops.shape(squares)[0], -1)), axis=-1)
            distance = per_example if distance is None else ops.add(distance, per_example)
        return ops.multiply(masked_mean(distance, sample_weight), self.weight)
