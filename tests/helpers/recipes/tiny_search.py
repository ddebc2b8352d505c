"""tests/helpers/recipes/tiny.py with a search space, for `kft tune` end-to-end tests."""

import dataclasses

import kft
from tests.helpers.recipes import tiny

recipe = dataclasses.replace(
    tiny.recipe,
    name="tiny_search",
    search={
        "lr": kft.tuning.LogUniform(0.01, 0.1),
        "finetune_lr": kft.tuning.Choice(0.001, 0.003, 0.01, 0.03),
        "finetune_epochs": kft.tuning.Budget(),
    },
)
