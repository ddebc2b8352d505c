"""A recipe's search space: which named hyperparameters a tuner varies, and how.

A recipe declares it on its params with `Recipe(search=...)`:

```python
recipe = kft.Recipe(
    name="flowers",
    params={"lr": 1e-3, "layer_decay": 0.8, "lora_rank": 8, "unfreeze": "groups:2",
            "finetune_epochs": 6},
    search={
        "lr": kft.tuning.LogUniform(1e-5, 1e-2),
        "layer_decay": kft.tuning.Uniform(0.6, 1.0),
        "lora_rank": kft.tuning.Choice(4, 8, 16),
        "unfreeze": kft.tuning.Choice("groups:1", "groups:2", "all"),
        "finetune_epochs": kft.tuning.Budget(),
    },
    ...
)
```

Each declaration becomes a `keras_tuner.HyperParameters` entry of the same
name, so keras-tuner's oracles (random, Bayesian, Hyperband) drive the params
the recipe already uses; a trial is the recipe's whole staged plan.
"""

import dataclasses
import math
from typing import Any, Optional, Tuple

from kft.errors import KftError


@dataclasses.dataclass(frozen=True)
class LogUniform:
    """A float drawn evenly on a log scale between `low` and `high`.

    The usual choice for learning rates and weight decay.

    Args:
        low: the smallest value (above 0).
        high: the largest value.
    """

    low: float
    high: float

    def check(self, name):
        _check_range(name, self.low, self.high)
        if self.low <= 0:
            raise KftError(f"Search {name!r}: LogUniform needs low > 0, got {self.low!r}.")

    def declare(self, hp, name):
        hp.Float(name, float(self.low), float(self.high), sampling="log")

    def kind(self):
        return float


@dataclasses.dataclass(frozen=True)
class Uniform:
    """A float drawn evenly between `low` and `high`, optionally on a grid.

    Args:
        low: the smallest value.
        high: the largest value.
        step: `None` for any value, or the grid spacing (e.g. 0.05).
    """

    low: float
    high: float
    step: Optional[float] = None

    def check(self, name):
        _check_range(name, self.low, self.high)

    def declare(self, hp, name):
        hp.Float(name, float(self.low), float(self.high), step=self.step)

    def kind(self):
        return float


@dataclasses.dataclass(frozen=True)
class Int:
    """An integer between `low` and `high` inclusive, every `step`.

    Args:
        low: the smallest value.
        high: the largest value.
        step: the spacing between values (`None`: every integer, or any
            integer on a log scale).
        log: sample on a log scale; then `step` is a factor, as in
            keras-tuner: `Int(4, 64, step=2, log=True)` is 4, 8, 16, 32 or 64.
    """

    low: int
    high: int
    step: Optional[int] = None
    log: bool = False

    def check(self, name):
        _check_range(name, self.low, self.high)
        for value in (self.low, self.high, self.step):
            if value is not None and not _is_int(value):
                raise KftError(f"Search {name!r}: Int takes integers, got {value!r}.")

    def declare(self, hp, name):
        hp.Int(name, self.low, self.high, step=self.step,
               sampling="log" if self.log else "linear")

    def kind(self):
        return int


class Choice:
    """One of the listed values.

    keras-tuner keeps choices of one type: all strings, all integers, all
    floats or all booleans.

    Args:
        *values: the candidates, e.g. `Choice(4, 8, 16)` or
            `Choice("head", "groups:2", "all")`.
    """

    def __init__(self, *values):
        self.values: Tuple[Any, ...] = tuple(values)

    def __repr__(self):
        return f"Choice({', '.join(repr(value) for value in self.values)})"

    def __eq__(self, other):
        return isinstance(other, Choice) and other.values == self.values

    def __hash__(self):
        return hash(self.values)

    def check(self, name):
        if not self.values:
            raise KftError(f"Search {name!r}: Choice needs at least one value.")
        types = {type(value) for value in self.values}
        if len(types) > 1 or not types <= {str, int, float, bool}:
            raise KftError(
                f"Search {name!r}: Choice values must all be of one type (str, int, float "
                f"or bool), got {self!r}. Encode other values as strings the recipe parses."
            )

    def declare(self, hp, name):
        hp.Choice(name, list(self.values))

    def kind(self):
        return type(self.values[0])


@dataclasses.dataclass(frozen=True)
class Budget:
    """Marks the param that counts epochs as Hyperband's training budget.

    With `kft tune --tuner hyperband`, each trial sets this param to the
    number of epochs Hyperband grants it, between 1 and `max`; every trial
    trains its whole staged plan from the start with that value. Random and
    Bayesian search leave the param at its value. At most one param is the
    budget.

    Args:
        max: the most epochs a trial gets; `None` means the param's value.
    """

    max: Optional[int] = None

    def check(self, name):
        if self.max is not None and (not _is_int(self.max) or self.max < 1):
            raise KftError(f"Search {name!r}: Budget(max=...) must be a positive integer.")

    def declare(self, hp, name):
        # Hyperband's oracle supplies the value as `tuner/epochs`.
        pass

    def kind(self):
        return int


DECLARATIONS = (LogUniform, Uniform, Int, Choice, Budget)


def check(search, params, recipe_name):
    """Checks a recipe's `search` against its params.

    Args:
        search: the recipe's `search` dict (or `None`).
        params: the recipe's params with their defaults.
        recipe_name: for messages.

    Raises:
        KftError: a name that is not a param, a declaration that is not a
            `kft.tuning` one, values of the wrong type for the param, or more
            than one `Budget`.
    """
    if search is None:
        return
    if not isinstance(search, dict):
        raise KftError(
            f"Recipe {recipe_name!r}: search must be a dict of param name -> "
            f"kft.tuning.LogUniform/Uniform/Int/Choice/Budget, got {type(search).__name__}."
        )
    for name, declaration in search.items():
        if name not in params:
            raise KftError(
                f"Recipe {recipe_name!r}: search names {name!r}, which is not one of its "
                f"params ({', '.join(sorted(params))}). Add it to params or fix the name."
            )
        if not isinstance(declaration, DECLARATIONS):
            raise KftError(
                f"Recipe {recipe_name!r}: search[{name!r}] must be a kft.tuning.LogUniform, "
                f"Uniform, Int, Choice or Budget, got {declaration!r}."
            )
        declaration.check(name)
        _check_type(recipe_name, name, declaration, params[name])
    budgets = [name for name, declaration in search.items() if isinstance(declaration, Budget)]
    if len(budgets) > 1:
        raise KftError(
            f"Recipe {recipe_name!r}: only one param can be the Budget, got {', '.join(budgets)}."
        )


def budget_param(search):
    """The name of the param marked `Budget`, or `None`."""
    for name, declaration in (search or {}).items():
        if isinstance(declaration, Budget):
            return name
    return None


def hyperparameters(search):
    """The `keras_tuner.HyperParameters` a search space declares (budget aside)."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    for name, declaration in search.items():
        declaration.declare(hp, name)
    return hp


def _check_range(name, low, high):
    for value in (low, high):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            raise KftError(f"Search {name!r}: bounds must be finite numbers, got {value!r}.")
    if not low < high:
        raise KftError(f"Search {name!r}: low must be below high, got {low!r} and {high!r}.")


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _check_type(recipe_name, name, declaration, default):
    """The values a declaration yields must suit the param's default type."""
    if default is None:
        return
    kind = declaration.kind()
    expected = type(default)
    if expected is bool or kind is bool:
        fits = expected is kind
    elif expected is float:
        fits = kind in (float, int)
    else:
        fits = expected is kind
    if not fits:
        raise KftError(
            f"Recipe {recipe_name!r}: search[{name!r}] = {declaration!r} yields "
            f"{kind.__name__} values, but the param's default {default!r} is a "
            f"{expected.__name__}. Use a declaration of the param's type."
        )
