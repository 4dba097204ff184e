"""Cardinality caps: how many distinct values an attribute may take, in both ways in.

Task names, queues, schedule entries and (in the exporter) worker hostnames come from
outside the process: a producer with a bug, or a hostile one, can send a new name per
message. Each attribute has a budget of distinct values; past it every new value is
recorded as ``__overflow__`` (:data:`~otel_celery_metrics.core.metric_table.OVERFLOW_VALUE`),
so series stay bounded and the overflow is visible in
``otel_celery_metrics_overflow_total{attribute}`` rather than a silent fold by the SDK.

One implementation: the in-process recorder and the exporter's handlers both admit values
through :class:`Caps`.
"""

from __future__ import annotations

from collections.abc import Mapping

from otel_celery_metrics.core.metric_table import OVERFLOW_VALUE

__all__ = ["Caps"]


class Caps:
    """Budgets of distinct values per attribute; what overflowed is counted per attribute.

    Not thread-safe: callers admit under their own lock (the recorder) or from one thread
    (the exporter's receive loop).
    """

    def __init__(self, limits: Mapping[str, int]) -> None:
        self._limits = dict(limits)
        self._seen: dict[str, set[str]] = {kind: set() for kind in self._limits}
        #: (attribute,) -> measurements whose value became ``__overflow__``.
        self.overflow: dict[tuple[str, ...], float] = {}

    def check(self, kind: str, value: str) -> tuple[str, bool]:
        """(the value to record, whether the cap replaced it); takes a slot when free."""
        seen = self._seen[kind]
        if value in seen:
            return value, False
        if len(seen) >= self._limits[kind]:
            return OVERFLOW_VALUE, True
        seen.add(value)
        return value, False

    def admit(self, kind: str, value: str) -> str:
        """:meth:`check`, counting an overflow in :attr:`overflow`."""
        admitted, capped = self.check(kind, value)
        if capped:
            key = (kind,)
            self.overflow[key] = self.overflow.get(key, 0) + 1
        return admitted

    def forget(self, kind: str, value: str) -> None:
        """Give ``value``'s slot back (a forgotten worker frees its place)."""
        self._seen[kind].discard(value)
