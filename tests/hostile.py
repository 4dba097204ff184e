"""What the property tests' reference models count as a usable time, written apart from
``core/values.py`` on purpose: the model must not share the code it checks."""

from __future__ import annotations

import math


def is_time(value: object) -> bool:
    """A finite real number, as the docs define a usable time (bool is not one)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False
