"""kft: fine-tune pretrained Keras models, the way the best practitioners do."""

__version__ = "0.1.0"

from kft.errors import KftError
from kft.recipe import Recipe, Stage
