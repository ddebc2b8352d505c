"""kft: fine-tune pretrained Keras models, the way the best practitioners do.

`import kft` also registers every kft layer, optimizer, schedule, callback,
metric and keras-hub task with Keras (`kft.saving`), so
`keras.saving.load_model` opens models that hold them.
"""

__version__ = "0.1.0"

from kft.internal import tensorflow_startup  # noqa: F401  (first: starts TF quietly)

from kft import data
from kft import evaluation
from kft import export
from kft import freezing
from kft import inference
from kft import layers
from kft import optimizers
from kft import peft
from kft import regularizers
from kft import saving
from kft import schedules
from kft import select
from kft import suggestion
from kft import training
from kft import tuning
from kft.errors import KftError
from kft.errors import TrainingDiverged
from kft.freezing import GradualUnfreezing
from kft.freezing import LayerGroup
from kft.freezing import freeze
from kft.freezing import layer_groups
from kft.freezing import prepare_optimizer
from kft.freezing import unfreeze
from kft.interpolation import interpolate
from kft.models import text
from kft.models import vision
from kft.runs.recipe import Recipe
from kft.runs.recipe import Stage
from kft.suggestion import suggest
from kft.training import feature_cache  # kft.feature_cache, its path before kft.training
from kft.training.lr_finder import find_lr
