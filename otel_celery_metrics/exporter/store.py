"""Counters the event handlers increment, with the cardinality caps applied on the way in.

Counting is a dict increment on the hot path (no lock, no SDK call): the receive loop is
single-threaded, and a scrape copies each dict (an atomic C-level copy under the GIL)
before turning it into observations. Caps (:class:`~otel_celery_metrics.core.caps.Caps`,
shared with the in-process recorder) bound every dict: task names, queues and
workers each have a budget, past which the value becomes ``__overflow__``, and a
metric's distinct attribute tuples are capped below the OpenTelemetry SDK's own limit
(2000), past which the SDK would fold series silently.
"""

from __future__ import annotations

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.caps import Caps

__all__ = ["MAX_SERIES_PER_COUNTER", "Caps", "CounterStore", "Counters", "Key"]

Key = tuple[str, ...]

#: Distinct attribute tuples per counter before new ones fold into one overflow tuple.
MAX_SERIES_PER_COUNTER = 1500


class Counters:
    """One counter's cumulative values by attribute tuple."""

    __slots__ = ("name", "values")

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[Key, float] = {}

    def add(self, key: Key, amount: float = 1) -> None:
        values = self.values
        current = values.get(key)
        if current is None:
            if len(values) >= MAX_SERIES_PER_COUNTER:
                key = (mt.OVERFLOW_VALUE,) * len(key)
                current = values.get(key, 0)
            else:
                current = 0
        values[key] = current + amount

    def snapshot(self) -> dict[Key, float]:
        return self.values.copy()

    def forget_where(self, position: int, value: str) -> None:
        """Remove every series whose attribute at ``position`` is ``value``."""
        # list() copies the keys atomically: the receive thread may be adding some.
        for key in [k for k in list(self.values) if len(k) > position and k[position] == value]:
            self.values.pop(key, None)


class CounterStore:
    """All counters by metric name; created on first use."""

    def __init__(self) -> None:
        self._counters: dict[str, Counters] = {}

    def counter(self, name: str) -> Counters:
        found = self._counters.get(name)
        if found is None:
            found = self._counters[name] = Counters(name)
        return found
