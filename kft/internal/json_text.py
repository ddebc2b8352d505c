"""JSON that every strict parser reads: `null` where Python would write `NaN`.

`json.dumps` writes `NaN` and `Infinity` for non-finite floats, which
JavaScript, `jq` and most JSON libraries reject. A diverged metric is
written as `null` instead, and numpy scalars as the numbers they hold.
"""

import json
import math

import numpy as np


def finite(value):
    """`value` with non-finite floats as `None` and numpy values as Python ones."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def dumps(value):
    """Indented, strictly valid JSON text of `value`, ending in a newline.

    Values JSON has no type for (a callable param, a path) are written as
    their `str`.
    """
    return json.dumps(finite(value), indent=2, allow_nan=False, default=str) + "\n"
