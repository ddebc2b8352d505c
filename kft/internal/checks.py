"""Argument checks shared by kft's constructors."""

import math
import numbers


def is_number(value):
    """A finite real number, not a bool (`True` is an int to Python)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
