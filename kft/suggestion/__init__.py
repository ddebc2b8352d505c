"""How deep to fine-tune: domain distance and relative gradient norms per layer group.

`kft.suggest(model, data.train)` (or `kft suggest RECIPE`) compares each layer
group's activations on the target data with those on a sample of the
pretraining domain, measures how hard the target loss pulls on each group,
and recommends `train="groups:N"` and a layer decay.
"""

from kft.suggestion.activations import group_feature_model
from kft.suggestion.activations import pooled_features
from kft.suggestion.distance import domain_distance
from kft.suggestion.distance import linear_cka
from kft.suggestion.gradient_norms import relative_gradient_norms
from kft.suggestion.suggestion import GroupSignal
from kft.suggestion.suggestion import Suggestion
from kft.suggestion.suggestion import recommend
from kft.suggestion.suggestion import suggest
