"""Training machinery around `model.fit`: strategies, mixed precision, gradient
accumulation, feature caching and the learning-rate finder."""

from kft.training import accumulation
from kft.training import distribute
from kft.training import feature_cache
from kft.training import precision
from kft.training.lr_finder import LRFinderResult
from kft.training.lr_finder import find_lr
