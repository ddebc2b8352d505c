"""Keep what the pretrained model knew: penalties on drifting away from it.

`L2SP` pulls the weights that train towards their start, `OutputKL` the
predictions towards the pretrained model's, `FeatureDistance` the backbone's
features towards the pretrained ones. Train with one through `Regularized`
(a `keras.Model` around the model; the model saves without it), or per stage
in a recipe: `kft.Stage(..., regularize="l2sp:0.01")` (`spec.FORMS`).
"""

from kft.regularizers.base import Regularized
from kft.regularizers.base import Regularizer
from kft.regularizers.features import FeatureDistance
from kft.regularizers.kl import OutputKL
from kft.regularizers.l2sp import L2SP
from kft.regularizers.reference import frozen_copy
from kft.regularizers.spec import FORMS
from kft.regularizers.spec import from_spec
