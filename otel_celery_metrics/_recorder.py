"""The recording end: metric table -> OpenTelemetry instruments, with bounded attributes.

Only the process that owns the meter provider records (the worker's main process under
prefork, the only process under solo/threads). Measurements arrive as compact tuples
``(metric index, value, attribute values in table order)`` — from receivers in this
process or decoded from pool children — and :class:`Recorder` turns them into
instrument calls. Caps are applied here, once, so every child of a worker shares one
budget of task names, queues and series.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context
from opentelemetry.util.types import Attributes

from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._safety import FailureLog
from otel_celery_metrics.settings import Settings

AttrValues = tuple[str, ...]
#: (metric index, value, attribute values) or, with the sampled span current when it was
#: measured, (metric index, value, attribute values, trace id, span id).
Measurement = tuple[int, float, AttrValues] | tuple[int, float, AttrValues, int, int]


class MetricSink(Protocol):
    """Where receivers send measurements; the prefork bridge decides what is behind it."""

    def emit(self, metric: int, value: float, attrs: AttrValues) -> None: ...

    def emit_traced(
        self, metric: int, value: float, attrs: AttrValues, trace_id: int, span_id: int
    ) -> None: ...


ObserveCallback = Callable[[], Iterable[tuple[float, AttrValues]]]

_OVERFLOW_ATTRIBUTE = mt.METRIC_INDEX[mt.SELF_OVERFLOW.name]
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)


class Recorder:
    """Records measurements into instruments created from :data:`metric_table.METRICS`."""

    def __init__(
        self,
        meter: Meter,
        settings: Settings,
        failures: FailureLog | None = None,
        observers: dict[str, ObserveCallback] | None = None,
    ) -> None:
        self._settings = settings
        self._failures = failures or FailureLog()
        self._lock = threading.Lock()
        self._task_names: set[str] = set()
        self._queues: set[str] = set()
        self._series: list[set[frozenset[tuple[str, str]]]] = [set() for _ in mt.METRICS]
        # Raw attribute tuple -> (attributes to record, which cap replaced a value).
        self._cache: list[dict[AttrValues, tuple[Attributes, str | None]]] = [
            {} for _ in mt.METRICS
        ]
        self._record: list[Callable[..., None]] = []
        observers = observers or {}
        self._is_counter = [spec.kind is mt.InstrumentKind.COUNTER for spec in mt.METRICS]
        for spec in mt.METRICS:
            self._record.append(self._create(meter, spec, observers.get(spec.name)))
        if self._failures.on_failure is None:
            # Standalone use: failures count here. The instrumentor routes them through the
            # process' sink instead, so a pool child's failures reach the main process.
            self._failures.on_failure = lambda n: self.emit(
                mt.METRIC_INDEX[mt.SELF_DROPPED.name], n, ("internal_error",)
            )
        # Self-metrics start at an explicit 0, so "increase(...) > 0" alerts see the first
        # drop and dashboards show that nothing was lost rather than no data.
        for reason in mt.DROP_REASONS:
            self._record[mt.METRIC_INDEX[mt.SELF_DROPPED.name]](0, {mt.REASON: reason})
        for attribute in mt.OVERFLOW_ATTRIBUTES:
            self._record[_OVERFLOW_ATTRIBUTE](0, {mt.ATTRIBUTE: attribute})

    # -- instrument creation -------------------------------------------------------------

    def _buckets(self, spec: mt.MetricSpec) -> Sequence[float] | None:
        if spec is mt.TASK_RUNTIME:
            return self._settings.runtime_buckets
        if spec is mt.TASK_QUEUE_WAIT:
            return self._settings.queue_wait_buckets
        return spec.buckets

    def _create(
        self, meter: Meter, spec: mt.MetricSpec, observe: ObserveCallback | None
    ) -> Callable[..., None]:
        kind = spec.kind
        if kind is mt.InstrumentKind.COUNTER:
            return meter.create_counter(spec.name, unit=spec.unit, description=spec.description).add
        if kind is mt.InstrumentKind.HISTOGRAM:
            return meter.create_histogram(
                spec.name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=self._buckets(spec),
            ).record
        callbacks = [self._observable_callback(spec, observe)] if observe else []
        if kind is mt.InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER:
            meter.create_observable_up_down_counter(
                spec.name, callbacks=callbacks, unit=spec.unit, description=spec.description
            )
        else:
            meter.create_observable_gauge(
                spec.name, callbacks=callbacks, unit=spec.unit, description=spec.description
            )
        return _no_sync_record

    def _observable_callback(
        self, spec: mt.MetricSpec, observe: ObserveCallback
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        index = mt.METRIC_INDEX[spec.name]
        # Attribute sets seen before keep reporting 0 instead of vanishing, so a gauge
        # that drops to zero reads 0 in Prometheus rather than going stale.
        seen: set[AttrValues] = set()

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                totals: dict[AttrValues, float] = dict.fromkeys(seen, 0.0)
                for value, raw in observe():
                    attrs, _ = self._admit(index, raw)
                    key = tuple(str(v) for v in (attrs or {}).values())
                    totals[key] = totals.get(key, 0.0) + value
                    seen.add(key)
                keys = [k for k in spec.attributes if k in self._settings.attributes]
                return [Observation(v, dict(zip(keys, k, strict=True))) for k, v in totals.items()]
            except Exception as exc:  # noqa: BLE001 - never break a collection
                self._failures.record(f"observing {spec.name}", exc)
                return []

        return callback

    # -- recording -----------------------------------------------------------------------

    def emit(
        self, metric: int, value: float, attrs: AttrValues, context: Context | None = None
    ) -> None:
        """Record one measurement (in ``context``, if given). Never raises."""
        try:
            cached = self._cache[metric].get(attrs)
            if cached is None:
                cached = self._admit(metric, attrs)
            record_attrs, overflowed = cached
            self._record[metric](value, record_attrs, context=context)
            if overflowed is not None:
                self._record[_OVERFLOW_ATTRIBUTE](1, {mt.ATTRIBUTE: overflowed})
        except Exception as exc:  # noqa: BLE001 - metrics never raise into tasks
            self._failures.record("recording a measurement", exc)

    def emit_traced(
        self, metric: int, value: float, attrs: AttrValues, trace_id: int, span_id: int
    ) -> None:
        """Record one measurement taken while a sampled span was current.

        The span may have been current in another process (a pool child), so it is
        rebuilt here as a non-recording span: the SDK's trace-based exemplar filter then
        attaches its trace and span id to the point, linking a slow bucket to its trace.
        """
        try:
            span = NonRecordingSpan(
                SpanContext(trace_id, span_id, is_remote=True, trace_flags=_SAMPLED)
            )
            context = set_span_in_context(span)
        except Exception as exc:  # noqa: BLE001 - metrics never raise into tasks
            self._failures.record("recording a traced measurement", exc)
            return
        self.emit(metric, value, attrs, context)

    def emit_many(self, measurements: Iterable[Measurement]) -> None:
        """Record a batch; counter increments with the same attributes are summed first
        (one SDK call per series per batch instead of one per task)."""
        sums: dict[tuple[int, AttrValues], float] = {}
        is_counter = self._is_counter
        for measurement in measurements:
            try:
                metric = measurement[0]
                if len(measurement) == 5:
                    self.emit_traced(*measurement)
                elif is_counter[metric]:
                    key = (metric, tuple(measurement[2]))
                    sums[key] = sums.get(key, 0) + measurement[1]
                else:
                    self.emit(metric, measurement[1], tuple(measurement[2]))
            except Exception as exc:  # noqa: BLE001 - a malformed measurement is dropped
                self._failures.record("recording a batch of measurements", exc)
        for (metric, attrs), total in sums.items():
            self.emit(metric, total, attrs)

    def _admit(self, metric: int, raw: AttrValues) -> tuple[Attributes, str | None]:
        """Apply the attribute set, the name/queue caps and the series cap to ``raw``."""
        spec = mt.METRICS[metric]
        if len(raw) != len(spec.attributes):
            msg = f"{spec.name} takes {len(spec.attributes)} attribute values, got {len(raw)}"
            raise ValueError(msg)
        keep = self._settings.attributes if spec.recorded_in != "self" else None
        overflowed: str | None = None
        attrs: dict[str, str] = {}
        with self._lock:
            for key, value in zip(spec.attributes, raw, strict=True):
                if keep is not None and key not in keep:
                    continue
                text = value if isinstance(value, str) else str(value)
                if key == mt.TASK_NAME:
                    text, capped = _capped(text, self._task_names, self._settings.max_task_names)
                    overflowed = overflowed or ("task_name" if capped else None)
                elif key == mt.QUEUE:
                    text, capped = _capped(text, self._queues, self._settings.max_queues)
                    overflowed = overflowed or ("queue" if capped else None)
                attrs[key] = text
            series = self._series[metric]
            identity = frozenset(attrs.items())
            if identity not in series:
                if len(series) >= self._settings.max_series_per_metric:
                    attrs = dict.fromkeys(attrs, mt.OVERFLOW_VALUE)
                    overflowed = "series"
                    identity = frozenset(attrs.items())
                series.add(identity)
            result: tuple[Attributes, str | None] = (attrs, overflowed)
            cache = self._cache[metric]
            # Hostile input (a flood of distinct task names) must not grow the cache
            # without bound: past a generous size, admission is recomputed per call.
            if len(cache) < 4 * self._settings.max_series_per_metric:
                cache[raw] = result
        return result


def _capped(value: str, seen: set[str], cap: int) -> tuple[str, bool]:
    if value in seen:
        return value, False
    if len(seen) >= cap:
        return mt.OVERFLOW_VALUE, True
    seen.add(value)
    return value, False


def _no_sync_record(_value: float, _attrs: Attributes, **_kwargs: object) -> None:
    """Observable instruments are read by callbacks; nothing records into them."""
