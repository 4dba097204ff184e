"""The main process' merged view of what pool children recorded: deltas in, SDK metrics out.

Children send delta points (:mod:`otel_celery_metrics.pool.codec`); :class:`RelayStore`
adds them into one cumulative series per (scope, metric, attribute set), whichever child
sent them, so the worker looks like one process. A child that exits takes nothing with
it: its deltas are already here.

Each metric reader of the main process gets a :class:`ReaderView`: a cumulative reader
(Prometheus, OTLP by default) is handed the cumulative series; a delta reader is handed
what changed since its own previous collection. Merged values by kind:

- sums (counters, up-down counters, observable counters): the sum of every child's
  deltas; an observable up-down counter therefore keeps the last value of a child that
  exited;
- histograms: bucket counts, sum and count added, min and max kept, the application's
  own bucket boundaries (a metric whose boundaries differ between children, which Views
  configured the same everywhere cannot produce, gets one series per boundary set);
- gauges (synchronous or observable): the latest value any child reported.

The number of series per metric is capped (``max_series``, the SDK's default cardinality
limit): further attribute sets are folded into one ``otel.metric.overflow=true`` series,
as the SDK itself does, and counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.pool.codec import GAUGE, HISTOGRAM, SUM, Attrs, MetricKey, Point, Scope

_OVERFLOW: Attrs = (("otel.metric.overflow", True),)
_SeriesKey = tuple[Scope, MetricKey]


class ReaderView:
    """What one reader of the main process was handed last (delta readers only)."""

    def __init__(self, delta_kinds: frozenset[str]) -> None:
        #: kinds (``counter``, ``updown``, ``histogram``) this reader wants as deltas
        self.delta_kinds = delta_kinds
        self.last: dict[tuple[_SeriesKey, Attrs], tuple[Any, ...]] = {}
        self.last_time = time.time_ns()

    def wants_delta(self, metric: MetricKey) -> bool:
        kind = metric[3]
        if kind == HISTOGRAM:
            return "histogram" in self.delta_kinds
        if kind == SUM:
            return ("counter" if metric[4] else "updown") in self.delta_kinds
        return False


class RelayStore:
    """Cumulative series merged from every pool child's deltas."""

    def __init__(
        self,
        max_series: int = 2000,
        on_overflow: Callable[[int], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self._max_series = max_series
        self._on_overflow = on_overflow
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[_SeriesKey, dict[Attrs, list[Any]]] = {}

    def reinit_locks(self) -> None:
        """A new lock in a forked child (see ``Recorder.reinit_locks``)."""
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sum(len(s) for s in self._series.values())

    def add(self, points: list[Point]) -> None:
        overflowed = 0
        with self._lock:
            for scope, metric, point_attrs, data in points:
                series = self._series.setdefault((scope, metric), {})
                attrs = point_attrs
                cell = series.get(attrs)
                if cell is None:
                    if len(series) >= self._max_series and attrs != _OVERFLOW:
                        overflowed += 1
                        attrs = _OVERFLOW
                        cell = series.get(attrs)
                    if cell is None:
                        series[attrs] = _new_cell(metric[3], data)
                        continue
                _add(metric[3], cell, data)
        if overflowed and self._on_overflow is not None:
            self._on_overflow(overflowed)

    def metrics(self, view: ReaderView) -> dict[Scope, list[Any]]:
        """SDK ``Metric`` s for one reader, by scope."""
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Gauge,
            Histogram,
            HistogramDataPoint,
            Metric,
            NumberDataPoint,
            Sum,
        )

        now = self._clock()
        out: dict[Scope, list[Any]] = {}
        with self._lock:
            items = [(key, list(series.items())) for key, series in self._series.items()]
        for (scope, metric), series in items:
            name, description, unit, kind, monotonic, bounds = metric
            delta = view.wants_delta(metric)
            temporality = (
                AggregationTemporality.DELTA if delta else AggregationTemporality.CUMULATIVE
            )
            points: list[Any] = []
            for attrs, cell in series:
                attributes = dict(attrs)
                if kind == GAUGE:
                    points.append(NumberDataPoint(attributes, cell[0], now, cell[1]))
                    continue
                cumulative = tuple(cell) if kind == SUM else (cell[0], tuple(cell[1]), *cell[2:])
                start = cell[0]
                snapshot: tuple[Any, ...] | None = cumulative
                if delta:
                    last = view.last.get(((scope, metric), attrs))
                    view.last[((scope, metric), attrs)] = cumulative
                    start = max(start, view.last_time)
                    snapshot = _minus(kind, cumulative, last)
                if snapshot is None:
                    continue
                if kind == SUM:
                    points.append(NumberDataPoint(attributes, start, now, snapshot[1]))
                else:
                    _, counts, total, count, low, high = snapshot
                    points.append(HistogramDataPoint(
                        attributes=attributes, start_time_unix_nano=start, time_unix_nano=now,
                        count=count, sum=total, bucket_counts=counts,
                        explicit_bounds=bounds, min=low, max=high,
                    ))
            if not points:
                continue
            data: Any
            if kind == SUM:
                data = Sum(points, temporality, monotonic)
            elif kind == HISTOGRAM:
                data = Histogram(points, temporality)
            else:
                data = Gauge(points)
            out.setdefault(scope, []).append(Metric(name, description, unit, data))
        view.last_time = now
        return out


def _new_cell(kind: str, data: tuple[Any, ...]) -> list[Any]:
    if kind == HISTOGRAM:
        start, counts, total, count, low, high = data
        return [start, list(counts), total, count, low, high]
    return list(data)


def _add(kind: str, cell: list[Any], data: tuple[Any, ...]) -> None:
    if kind == SUM:
        cell[1] += data[1]
    elif kind == GAUGE:
        if data[0] >= cell[0]:
            cell[0], cell[1] = data
    else:
        _, counts, total, count, low, high = data
        cell_counts = cell[1]
        for i, c in enumerate(counts):
            cell_counts[i] += c
        cell[2] += total
        cell[3] += count
        cell[4] = min(cell[4], low)
        cell[5] = max(cell[5], high)


def _minus(
    kind: str, now: tuple[Any, ...], last: tuple[Any, ...] | None
) -> tuple[Any, ...] | None:
    """What changed since ``last``; None when nothing did (no point for a delta reader).

    A delta histogram's min and max are those of the whole series: children send
    per-interval min/max, but the intervals of children and readers do not line up.
    """
    if last is None:
        return now if (now[1] if kind == SUM else now[3]) else None
    if kind == SUM:
        change = now[1] - last[1]
        return (now[0], change) if change else None
    count = now[3] - last[3]
    if not count:
        return None
    counts = tuple(a - b for a, b in zip(now[1], last[1], strict=True))
    return (now[0], counts, now[2] - last[2], count, now[4], now[5])


def merge_into(data: Any, by_scope: dict[Scope, list[Any]], resource: Any) -> Any:
    """``data`` (a reader's own collection, possibly None) with the relayed metrics added.

    Relayed metrics join the main process' own scope of the same name, version and
    schema; a metric the main process recorded too (an instrumentation active in both)
    gets one point per attribute set, the two added.
    """
    from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    if not by_scope:
        return data

    def scope_metrics(scope: Scope, metrics: list[Any]) -> Any:
        return ScopeMetrics(InstrumentationScope(scope[0], scope[1] or None, scope[2] or None),
                            metrics, scope[2])

    if data is None or not data.resource_metrics:
        return MetricsData([ResourceMetrics(
            resource, [scope_metrics(s, m) for s, m in by_scope.items()], ""
        )])
    first, *rest = data.resource_metrics
    remaining = dict(by_scope)
    scopes = []
    for own in first.scope_metrics:
        key = (own.scope.name, own.scope.version or "", own.scope.schema_url or "")
        ours = remaining.pop(key, None)
        scopes.append(
            ScopeMetrics(own.scope, _combine(list(own.metrics), ours), own.schema_url)
            if ours else own
        )
    scopes.extend(scope_metrics(s, m) for s, m in remaining.items())
    return MetricsData([ResourceMetrics(first.resource, scopes, first.schema_url), *rest])


def _combine(own: list[Any], ours: list[Any]) -> list[Any]:
    from opentelemetry.sdk.metrics.export import Histogram, Metric, Sum

    by_name = {m.name: i for i, m in enumerate(own)}
    for metric in ours:
        i = by_name.get(metric.name)
        if i is None:
            own.append(metric)
            continue
        mine = own[i]
        a, b = mine.data, metric.data
        same_kind = type(a) is type(b) and isinstance(a, Sum | Histogram)
        if not same_kind or a.aggregation_temporality != b.aggregation_temporality:
            own.append(metric)
            continue
        points = {frozenset(p.attributes.items()): p for p in a.data_points}
        for p in b.data_points:
            key = frozenset(p.attributes.items())
            other = points.get(key)
            points[key] = p if other is None else _sum_points(other, p)
        merged: Any
        if isinstance(a, Sum):
            merged = Sum(list(points.values()), a.aggregation_temporality, a.is_monotonic)
        else:
            merged = Histogram(list(points.values()), a.aggregation_temporality)
        own[i] = Metric(mine.name, mine.description, mine.unit, merged)
    return own


def _sum_points(a: Any, b: Any) -> Any:
    from opentelemetry.sdk.metrics.export import HistogramDataPoint, NumberDataPoint

    start = min(a.start_time_unix_nano, b.start_time_unix_nano)
    end = max(a.time_unix_nano, b.time_unix_nano)
    if isinstance(a, NumberDataPoint):
        return NumberDataPoint(a.attributes, start, end, a.value + b.value, a.exemplars)
    if tuple(a.explicit_bounds) != tuple(b.explicit_bounds):
        return a
    return HistogramDataPoint(
        attributes=a.attributes, start_time_unix_nano=start, time_unix_nano=end,
        count=a.count + b.count, sum=a.sum + b.sum,
        bucket_counts=[x + y for x, y in zip(a.bucket_counts, b.bucket_counts, strict=True)],
        explicit_bounds=a.explicit_bounds, min=min(a.min, b.min), max=max(a.max, b.max),
        exemplars=a.exemplars,
    )
