"""Hyperparameter search over a recipe's named params with KerasTuner (`kft tune`).

A recipe declares what to search with `search={name: declaration}`; each
trial runs the recipe's whole staged plan. See `kft.tuning.space` for the
declarations and `kft.tuning.tuner.tune` for the search.
"""

from kft.tuning.space import Budget
from kft.tuning.space import Choice
from kft.tuning.space import Int
from kft.tuning.space import LogUniform
from kft.tuning.space import Uniform

# keras-tuner (and the tensorboard it imports) loads only when a search runs,
# so recipe files that declare a search space import quickly.
_TUNER_NAMES = ("tune", "TuneResult", "RecipeTuner", "TUNERS")


def __getattr__(name):
    if name in _TUNER_NAMES:
        from kft.tuning import tuner

        return getattr(tuner, name)
    raise AttributeError(f"module 'kft.tuning' has no attribute {name!r}")
