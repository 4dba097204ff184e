"""Our self-aggregated histograms as OpenTelemetry SDK metric data (public SDK types only).

:class:`~otel_celery_metrics.recording.recorder.Recorder` aggregates task histograms itself (see its
module docstring for why). :class:`HistogramProducer` turns its cumulative points into the
SDK's ``MetricsData`` for one reader, in that reader's temporality, and merges them into
what the SDK collected. :class:`~otel_celery_metrics.sdk_adapter.SdkAdapter` calls it from
the reader's collection; nothing here touches an SDK private.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from otel_celery_metrics.recording.recorder import HistogramPoint

_logger = logging.getLogger(__name__)

#: ``source(reset_interval)``: every histogram series, cumulative (Recorder.histogram_points).
HistogramSource = Callable[[bool], "Sequence[HistogramPoint]"]

_Cumulative = tuple[tuple[int, ...], float, int]  # bucket counts, sum, count


class HistogramProducer:
    """One reader's view of the aggregated histograms (delta readers remember the last)."""

    def __init__(
        self, source: HistogramSource, scope_name: str, scope_version: str, resource: Any,
        delta: bool,
    ) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self._source = source
        self._scope = InstrumentationScope(scope_name, scope_version)
        self._resource = resource
        self._delta = delta
        # Delta readers: what this reader was handed last, per series.
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], _Cumulative] = {}
        self._last_time = time.time_ns()
        self._failed_once = False
        #: The last error building or merging our histograms (None: the last one worked).
        self.last_error: BaseException | None = None

    def merge_into(self, data: Any) -> Any:
        """``data`` (what the SDK collected) with our histograms added; never raises."""
        try:
            merged = self._merge(data, self._metrics(self._source(self._delta)))
        except Exception as exc:
            self.last_error = exc
            if not self._failed_once:
                self._failed_once = True
                _logger.error(
                    "otel-celery-metrics: adding task histograms to a collection failed "
                    "(%s: %s); logged once", type(exc).__name__, exc, exc_info=exc,
                )
            return data
        self.last_error = None
        return merged

    def self_check(self) -> str | None:
        """Build and merge a probe runtime point as a collection would, touching no state.

        Returns why our histograms would not appear in a collection, or None.
        """
        from otel_celery_metrics.core import metric_table as mt
        from otel_celery_metrics.recording.recorder import HistogramPoint

        spec = mt.TASK_RUNTIME
        bounds = spec.buckets or ()
        point = HistogramPoint(
            spec, {mt.TASK_NAME: "probe", mt.QUEUE: "probe"}, bounds, time.time_ns(),
            (1, *([0] * len(bounds))), 0.001, 1, 0.001, 0.001, 0.001, 0.001,
            ((0.001, time.time_ns(), 1, 1),),
        )
        try:
            producer = HistogramProducer(
                lambda _reset: [point], self._scope.name, self._scope.version or "",
                self._resource, delta=False,
            )
            data = producer._merge(None, producer._metrics([point]))
            names = {
                metric.name
                for rm in data.resource_metrics
                for sm in rm.scope_metrics
                if sm.scope.name == self._scope.name
                for metric in sm.metrics
            }
        except Exception as exc:  # noqa: BLE001 - reported as the check's answer
            return f"{type(exc).__name__}: {exc}"
        if point.spec.name not in names:
            return f"{point.spec.name} missing from a collection"
        return None

    def _metrics(self, points: Sequence[HistogramPoint]) -> list[Any]:
        from opentelemetry.sdk.metrics import Exemplar
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
        )

        now = time.time_ns()
        by_name: dict[str, tuple[Any, list[Any]]] = {}
        for p in points:
            counts, total, count = p.bucket_counts, p.sum, p.count
            start, low, high = p.start_time_unix_nano, p.min, p.max
            if self._delta:
                identity = (p.spec.name, tuple(p.attributes.items()))
                last = self._last.get(identity)
                self._last[identity] = (counts, total, count)
                if last is not None:
                    counts = tuple(c - b for c, b in zip(counts, last[0], strict=True))
                    total, count = total - last[1], count - last[2]
                    start = max(start, self._last_time)
                if count == 0:
                    continue
                low, high = p.interval_min, p.interval_max
            point = HistogramDataPoint(
                attributes=p.attributes, start_time_unix_nano=start, time_unix_nano=now,
                count=count, sum=total, bucket_counts=counts, explicit_bounds=p.bounds,
                min=low, max=high,
                exemplars=[
                    Exemplar({}, value, at, span_id=span_id, trace_id=trace_id)
                    for value, at, trace_id, span_id in p.exemplars
                ],
            )
            by_name.setdefault(p.spec.name, (p.spec, []))[1].append(point)
        self._last_time = now
        temporality = (
            AggregationTemporality.DELTA if self._delta else AggregationTemporality.CUMULATIVE
        )
        return [
            Metric(
                name=name, description=spec.description, unit=spec.unit,
                data=Histogram(data_points=points, aggregation_temporality=temporality),
            )
            for name, (spec, points) in by_name.items()
        ]

    def _merge(self, data: Any, ours: list[Any]) -> Any:
        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics

        if not ours:
            return data
        if data is None or not data.resource_metrics:
            scope = ScopeMetrics(scope=self._scope, metrics=ours, schema_url="")
            return MetricsData(
                resource_metrics=[
                    ResourceMetrics(resource=self._resource, scope_metrics=[scope], schema_url="")
                ]
            )
        first, *rest = data.resource_metrics
        scopes = list(first.scope_metrics)
        for i, scope_metrics in enumerate(scopes):
            if scope_metrics.scope.name == self._scope.name:
                scopes[i] = ScopeMetrics(
                    scope=scope_metrics.scope,
                    metrics=[*scope_metrics.metrics, *ours],
                    schema_url=scope_metrics.schema_url,
                )
                break
        else:
            scopes.append(ScopeMetrics(scope=self._scope, metrics=ours, schema_url=""))
        merged = ResourceMetrics(
            resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url
        )
        return MetricsData(resource_metrics=[merged, *rest])
