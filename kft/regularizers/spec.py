"""A stage's `regularize=` setting: a short string or a regulariser object.

`"l2sp:ALPHA"`, `"l2sp:ALPHA,BETA"`, `"kl:WEIGHT"` and `"features:WEIGHT"` name
`L2SP`, `OutputKL` and `FeatureDistance` with their defaults otherwise.
"""

import math

from kft.errors import KftError
from kft.regularizers.base import Regularizer
from kft.regularizers.features import FeatureDistance
from kft.regularizers.kl import OutputKL
from kft.regularizers.l2sp import L2SP

FORMS = ('"l2sp:ALPHA"', '"l2sp:ALPHA,BETA"', '"kl:WEIGHT"', '"features:WEIGHT"')
_EXAMPLES = '"l2sp:0.01", "l2sp:0.01,0.001", "kl:0.1", "features:0.1"'


def from_spec(value):
    """The regulariser `value` names, unbound; `None` for none.

    Args:
        value: `None`, one of the `FORMS` (e.g. `"l2sp:0.01,0.001"`) or a
            `kft.regularizers` object (returned as it is).

    Raises:
        KftError: anything else, with the valid forms.
    """
    if value is None or isinstance(value, Regularizer):
        return value
    if isinstance(value, str):
        kind, _, numbers = value.strip().partition(":")
        kind = kind.strip().lower()
        parts = [_number(part) for part in numbers.split(",")] if numbers.strip() else []
        if None not in parts:
            if kind == "l2sp" and len(parts) in (1, 2) and parts[0] > 0 and parts[-1] >= 0:
                return L2SP(alpha=parts[0], beta=parts[1] if len(parts) == 2 else 0.0)
            if kind in ("kl", "features") and len(parts) == 1 and parts[0] > 0:
                return (OutputKL if kind == "kl" else FeatureDistance)(weight=parts[0])
    raise KftError(
        f"regularize={value!r} is not a regulariser; use None, {', '.join(FORMS)} "
        f"(ALPHA, WEIGHT > 0, BETA >= 0; e.g. {_EXAMPLES}) or a kft.regularizers object "
        "(L2SP, OutputKL, FeatureDistance)."
    )


def _number(text):
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None
