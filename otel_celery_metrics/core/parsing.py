"""Parsing the settings both ways in take as text: histogram boundaries, booleans, seconds.

One implementation each, for ``OTEL_CELERY_METRICS_*`` variables (in-process) and the
exporter's flags and ``OTEL_CELERY_EXPORTER_*`` variables, so the same value means the same
thing on both sides. Parsers raise ``ValueError`` with what was expected; the caller adds
the setting's name and the value (the in-process settings name the variable, argparse the
flag).
"""

from __future__ import annotations

import math

__all__ = ["parse_bool", "parse_buckets", "parse_seconds"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_buckets(raw: str) -> tuple[float, ...]:
    """Histogram boundaries in seconds: comma-separated, finite, >= 0, strictly increasing."""
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError("expected comma-separated numbers of seconds, e.g. 0.1,1,10") from None
    if not values:
        raise ValueError("expected at least one boundary")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError("boundaries must be finite and >= 0")
    if list(values) != sorted(set(values)):
        raise ValueError("boundaries must be strictly increasing")
    return values


def parse_bool(raw: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off``, in any case, surrounding blanks ignored."""
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("expected true or false")


def parse_seconds(raw: str) -> float:
    """A duration in seconds: a finite number > 0 (the bounds of core.values, timeouts)."""
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("expected a number of seconds, e.g. 86400") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError("expected a finite number of seconds > 0")
    return value
