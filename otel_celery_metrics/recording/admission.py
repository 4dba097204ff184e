"""Admission: which attribute values a measurement is recorded with.

Every measurement the recorder takes passes through :meth:`Admission.admitted`, which
applies, in order: the user's narrowing of attribute keys (``OTEL_CELERY_METRICS_ATTRIBUTES``),
the caps on distinct task names, queues and schedule entries (:class:`~otel_celery_metrics.
core.caps.Caps`, the same implementation as the exporter's), and the cap on distinct
attribute sets per metric (``OTEL_CELERY_METRICS_MAX_SERIES_PER_METRIC``, below the SDK's own
silent fold at 2,000). The result is cached per raw value set, so the per-task hot path pays
one dict lookup; the cache itself is bounded against a flood of distinct names.

Split from :mod:`~otel_celery_metrics.recording.recorder`, which owns the aggregates.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.caps import Caps
from otel_celery_metrics.recording.settings import Settings

__all__ = ["COLLECTION_LOCK_WAIT", "Admission", "AttrValues"]

AttrValues = tuple[str, ...]

#: Seconds a collection waits for a lock (the aggregates', admission's) before giving up.
COLLECTION_LOCK_WAIT = 1.0

# Attributes whose distinct values are capped; the others are bounded by construction
# (states, exception classes folded by length, wait_from).
_CAPPED = frozenset({mt.TASK_NAME, mt.QUEUE, mt.SCHEDULE_ENTRY})


class Admission:
    """Admitted attribute values per metric of :data:`metric_table.METRICS`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._caps = Caps({
            mt.TASK_NAME: settings.max_task_names,
            mt.QUEUE: settings.max_queues,
            mt.SCHEDULE_ENTRY: settings.max_task_names,
        })
        self._series: list[set[AttrValues]] = [set() for _ in mt.METRICS]
        # Raw attribute values -> (admitted values, which cap replaced a value).
        self._cache: list[dict[AttrValues, tuple[AttrValues, str | None]]] = [
            {} for _ in mt.METRICS
        ]
        #: Attribute keys each metric records, after the user's narrowing.
        self.keys: list[tuple[str, ...]] = [self._kept_keys(spec) for spec in mt.METRICS]

    def reinit_lock(self) -> None:
        """A new lock, in a forked child (the parent's may have been held at the fork)."""
        self._lock = threading.Lock()

    def _kept_keys(self, spec: mt.MetricSpec) -> tuple[str, ...]:
        if spec.recorded_in == "self":
            return spec.attributes
        # Keys users cannot narrow (beat's schedule_entry) are always kept.
        return tuple(
            k for k in spec.attributes
            if k in self._settings.attributes or k not in mt.NARROWABLE_ATTRIBUTES
        )

    def admitted(self, metric: int, raw: AttrValues) -> tuple[AttrValues, str | None]:
        """(the values to record ``raw`` with, the attribute whose cap replaced a value)."""
        cached = self._cache[metric].get(raw)
        if cached is None:
            cached = self._admit(metric, raw)
        return cached

    def _admit(self, metric: int, raw: AttrValues) -> tuple[AttrValues, str | None]:
        """Apply the attribute set, the name/queue caps and the series cap to ``raw``."""
        spec = mt.METRICS[metric]
        if len(raw) != len(spec.attributes):
            msg = f"{spec.name} takes {len(spec.attributes)} attribute values, got {len(raw)}"
            raise ValueError(msg)
        keep = self.keys[metric]
        overflowed: str | None = None
        values: list[str] = []
        with _bounded(self._lock):  # on a cache miss only; see _bounded
            for key, value in zip(spec.attributes, raw, strict=True):
                if key not in keep:
                    continue
                text = value if isinstance(value, str) else str(value)
                if spec.recorded_in != "self" and key in _CAPPED:
                    text, capped = self._caps.check(key, text)
                    if capped and overflowed is None:
                        overflowed = key
                values.append(text)
            admitted = tuple(values)
            series = self._series[metric]
            if admitted not in series:
                if len(series) >= self._settings.max_series_per_metric:
                    admitted = (mt.OVERFLOW_VALUE,) * len(admitted)
                    overflowed = "series"
                series.add(admitted)
            result = (admitted, overflowed)
            cache = self._cache[metric]
            # Hostile input (a flood of distinct task names) must not grow the cache
            # without bound: past a generous size, admission is recomputed per call.
            if len(cache) < 4 * self._settings.max_series_per_metric:
                cache[raw] = result
        return result


@contextlib.contextmanager
def _bounded(lock: threading.Lock, seconds: float = COLLECTION_LOCK_WAIT) -> Iterator[None]:
    """Hold ``lock``, waiting at most ``seconds``; TimeoutError past that.

    For locks a collection may take (admission of a new gauge attribute set): every wait
    in a collection is bounded. The caller's failure handling counts the timeout.
    """
    if not lock.acquire(timeout=seconds):
        msg = f"a lock was not free after {seconds} s"
        raise TimeoutError(msg)
    try:
        yield
    finally:
        lock.release()
