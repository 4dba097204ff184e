"""The recording end: metric table -> aggregated values -> OpenTelemetry, with bounded attributes.

Only the process that owns the meter provider records: the worker's main process under
prefork (task outcomes come from Celery's own request callbacks there, see
:mod:`otel_celery_metrics.worker.outcomes`), the only process under solo/threads.
Measurements arrive as ``(metric index, value, attribute values in table order)`` and
:class:`Recorder` aggregates them itself.

Why aggregate here instead of calling the SDK per measurement: an SDK ``Counter.add`` or
``Histogram.record`` costs 10-12 us on the machines we measure (it cleans and hashes the
attributes and builds a measurement object every call), more than everything else a task
pays for its metrics together. Here a measurement is a cached tuple lookup and a few
additions under a lock (< 1 us). The SDK reads the aggregates when it collects:
counters through observable counters (public API), histograms through the producer that
:class:`otel_celery_metrics.sdk_adapter.SdkAdapter` hooks into each reader. Where
that hook is not possible (a meter provider that is not the SDK's), histograms are
recorded through the public API instead (``histograms_via_api=True``), slower but
identical in output.

The SDK keeps an instrument for its provider's lifetime and ignores the callbacks of a
second ``create_observable_*`` with the same name. So the observable instruments are
created once per meter and read whichever Recorder is attached to that meter now
(:meth:`Recorder.detach`): instrument, uninstrument, instrument again on one provider
reports each metric once, from the current Recorder.

Caps are applied here, once, so every pool process of a worker shares one budget of task
names, queues and series (:mod:`~otel_celery_metrics.recording.admission`).

Over 400 lines on purpose: :meth:`Recorder.task_ended` is the per-task hot path, inlined
(one lookup, one lock), and it must sit with the aggregates it writes and the collection
that reads them under the same lock. Admission (attribute sets, caps) is split out.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.admission import COLLECTION_LOCK_WAIT, Admission, AttrValues
from otel_celery_metrics.recording.settings import Settings

#: (trace id, span id) of the sampled span a measurement was taken in, for exemplars.
SpanIds = tuple[int, int]
#: (metric index, value, attribute values in table order).
Measurement = tuple[int, float, AttrValues]

_logger = logging.getLogger(__name__)


ObserveCallback = Callable[[], Iterable[tuple[float, AttrValues]]]

_OVERFLOW_ATTRIBUTE = mt.METRIC_INDEX[mt.SELF_OVERFLOW.name]
_TASKS = mt.METRIC_INDEX[mt.TASKS.name]
_RUNTIME = mt.METRIC_INDEX[mt.TASK_RUNTIME.name]
_QUEUE_WAIT = mt.METRIC_INDEX[mt.TASK_QUEUE_WAIT.name]
_RECEIVED = mt.METRIC_INDEX[mt.TASKS_RECEIVED.name]
_COUNTER = mt.InstrumentKind.COUNTER
# Seconds a collection waits for the aggregates' lock before serving without them.
_COLLECTION_LOCK_WAIT = COLLECTION_LOCK_WAIT
_HISTOGRAM = mt.InstrumentKind.HISTOGRAM
_GAUGE = mt.InstrumentKind.OBSERVABLE_GAUGE

_Callback = Callable[[CallbackOptions], Iterable[Observation]]
#: Per meter: metric name -> the attached Recorder's callback (see the module docstring).
_ATTACHED: weakref.WeakKeyDictionary[Meter, dict[str, _Callback]] = weakref.WeakKeyDictionary()


def _current_recorders_callback(slots: dict[str, _Callback], name: str) -> _Callback:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        current = slots.get(name)
        return current(options) if current is not None else ()

    return callback


class _Series:
    """One histogram series: explicit-bucket counts, sum, min/max and exemplars."""

    __slots__ = ("count", "counts", "exemplars", "imax", "imin", "max", "min", "start", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0
        self.count = 0
        self.min = self.imin = float("inf")
        self.max = self.imax = float("-inf")
        #: Per bucket, the last traced measurement since the last collection:
        #: (value, time ns, trace id, span id); None until one arrives.
        self.exemplars: list[tuple[float, int, int, int] | None] | None = None
        self.start = time.time_ns()

    def interval(self, value: float) -> None:
        self.imin = min(self.imin, value)
        self.imax = max(self.imax, value)

    def exemplar(self, bucket: int, value: float, span: SpanIds) -> None:
        if self.exemplars is None:
            self.exemplars = [None] * len(self.counts)
        self.exemplars[bucket] = (value, time.time_ns(), span[0], span[1])


class _TaskPair:
    """Everything the hot path touches for one (task name, queue), found by one lookup."""

    __slots__ = ("name", "queue", "received", "received_overflowed", "states", "waits")

    def __init__(self, name: str, queue: str) -> None:
        self.name = name
        self.queue = queue
        #: counter cell of celery.tasks.received, and the cap that replaced a value
        self.received: list[float] = [0]
        self.received_overflowed: str | None = None
        #: state -> its cells (celery.tasks counter, celery.task.runtime series)
        self.states: dict[str, _StateCells] = {}
        #: wait_from -> (queue-wait series, cap that replaced a value, admitted key)
        self.waits: dict[str, tuple[_Series, str | None, AttrValues]] = {}


class _StateCells:
    """What task_ended touches for one (task name, queue, state)."""

    __slots__ = ("cell", "overflowed", "runtime", "runtime_key", "runtime_overflowed")

    def __init__(
        self, cell: list[float], overflowed: str | None,
    ) -> None:
        #: counter cell of celery.tasks, and the cap that replaced a value
        self.cell = cell
        self.overflowed = overflowed
        #: the celery.task.runtime series, its admitted key and the cap that replaced a
        #: value; made with the first runtime (states such as REVOKED never have one)
        self.runtime: _Series | None = None
        self.runtime_key: AttrValues = ()
        self.runtime_overflowed: str | None = None


@dataclass(frozen=True)
class HistogramPoint:
    """A histogram series as the producer hands it to the SDK (plain data, no SDK types)."""

    spec: mt.MetricSpec
    attributes: dict[str, str]
    bounds: tuple[float, ...]
    start_time_unix_nano: int
    bucket_counts: tuple[int, ...]
    sum: float
    count: int
    min: float
    max: float
    #: Min/max since the previous collection that reset them (for delta temporality).
    interval_min: float
    interval_max: float
    exemplars: tuple[tuple[float, int, int, int], ...]


class Recorder:
    """Aggregates measurements of the metrics in :data:`metric_table.METRICS`."""

    def __init__(
        self,
        meter: Meter,
        settings: Settings,
        failures: FailureLog | None = None,
        observers: dict[str, ObserveCallback] | None = None,
        *,
        histograms_via_api: bool = False,
        track_interval: bool = False,
    ) -> None:
        """``histograms_via_api``: record histograms through the metrics API, one call per
        measurement (meter providers whose readers the SDK adapter cannot hook: slower,
        same output). ``track_interval``: keep min/max per collection interval too (a
        reader wants delta temporality)."""
        self._settings = settings
        # Standalone use (no FailureLog given): failures count here. The instrumentor passes
        # one that routes them through the process' sink, so a pool child's failures reach
        # the main process.
        self._failures = failures or FailureLog(on_failure=self._count_internal_errors)
        self._lock = threading.Lock()  # guards the aggregates below
        # Attribute sets, caps and the series cap (recording.admission).
        self._admission = Admission(settings)
        self._admitted = self._admission.admitted
        self._keys = self._admission.keys
        self._kinds = [spec.kind for spec in mt.METRICS]
        self._bounds: list[tuple[float, ...]] = [tuple(self._buckets(s) or ()) for s in mt.METRICS]
        # Counter values as one-element lists ("cells"), so the hot path adds in place.
        self._totals: list[dict[AttrValues, list[float]]] = [{} for _ in mt.METRICS]
        self._histograms: list[dict[AttrValues, _Series]] = [{} for _ in mt.METRICS]
        self._attrs: dict[tuple[int, AttrValues], dict[str, str]] = {}
        # The per-task hot path (task_ended) finds everything for a (task name, queue)
        # with one lookup.
        self._pairs: dict[tuple[str, str], _TaskPair] = {}
        self._runtime_bounds = self._bounds[_RUNTIME]
        self._wait_bounds = self._bounds[_QUEUE_WAIT]
        self._via_api: dict[int, Callable[..., None]] = {}
        self.track_interval = track_interval
        observers = observers or {}
        self._callbacks: dict[str, _Callback] = {}
        slots = _ATTACHED.get(meter)
        first = slots is None
        if slots is None:
            slots = _ATTACHED[meter] = {}
        self._slots = slots
        for index, spec in enumerate(mt.METRICS):
            self._create(meter, index, spec, observers.get(spec.name), slots if first else None)
        slots.update(self._callbacks)
        if histograms_via_api:
            self._use_api_for_histograms(meter)
        # Self-metrics start at an explicit 0, so "increase(...) > 0" alerts see the first
        # drop and dashboards show that nothing was lost rather than no data.
        dropped = mt.METRIC_INDEX[mt.SELF_DROPPED.name]
        for reason in mt.DROP_REASONS:
            self._totals[dropped][(reason,)] = [0]
        self._collection_timeouts = self._totals[dropped][("collection_timeout",)]
        self._timeouts_logged: set[str] = set()
        # Its own lock, never the aggregates' (that may be the lock that was not free):
        # collections, the relay's reader and take_span on the event loop all count here.
        self._timeouts_lock = threading.Lock()
        for attribute in mt.OVERFLOW_ATTRIBUTES:
            self._totals[_OVERFLOW_ATTRIBUTE][(attribute,)] = [0]
        relayed = mt.METRIC_INDEX[mt.SELF_RELAYED.name]
        for signal in mt.RELAY_SIGNALS:
            self._totals[relayed][(signal,)] = [0]
        inactive = mt.METRIC_INDEX[mt.SELF_HOOK_INACTIVE.name]
        for hook in mt.HOOKS:
            self._totals[inactive][(hook,)] = [0]

    def detach(self) -> None:
        """Stop reporting through this meter's instruments (uninstrument); a Recorder
        created later on the same meter reports through them instead."""
        for name, callback in self._callbacks.items():
            if self._slots.get(name) is callback:
                del self._slots[name]

    def _count_internal_errors(self, n: int) -> None:
        self.emit(mt.METRIC_INDEX[mt.SELF_DROPPED.name], n, ("internal_error",))

    def reinit_locks(self) -> None:
        """New locks, in a forked child: a copy may have been taken while another thread
        of the parent held one, and would then never be released in the child."""
        self._lock = threading.Lock()
        self._admission.reinit_lock()
        self._timeouts_lock = threading.Lock()

    # -- instrument creation -------------------------------------------------------------

    def _buckets(self, spec: mt.MetricSpec) -> Sequence[float] | None:
        if spec is mt.TASK_RUNTIME:
            return self._settings.runtime_buckets
        if spec is mt.TASK_QUEUE_WAIT:
            return self._settings.queue_wait_buckets
        return spec.buckets

    def _create(
        self,
        meter: Meter,
        index: int,
        spec: mt.MetricSpec,
        observe: ObserveCallback | None,
        slots: dict[str, _Callback] | None,
    ) -> None:
        """This Recorder's callback for ``spec``; the instrument itself only when
        ``slots`` is given (the first Recorder on this meter)."""
        kind = spec.kind
        if kind is _HISTOGRAM:
            return  # aggregated here; see histogram_points() and histograms_via_api
        if observe is not None:
            self._callbacks[spec.name] = self._observable_callback(spec, observe)
        elif kind is _COUNTER or kind is _GAUGE:
            # Counters, and gauges set through emit() (the hook self-metric).
            self._callbacks[spec.name] = self._counter_callback(index)
        if slots is None:
            return
        callbacks = [_current_recorders_callback(slots, spec.name)]
        if kind is _COUNTER:
            create: Callable[..., object] = meter.create_observable_counter
        elif kind is mt.InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER:
            create = meter.create_observable_up_down_counter
        else:
            create = meter.create_observable_gauge
        create(spec.name, callbacks=callbacks, unit=spec.unit, description=spec.description)

    def _use_api_for_histograms(self, meter: Meter) -> None:
        for index, spec in enumerate(mt.METRICS):
            if spec.kind is not _HISTOGRAM:
                continue
            self._via_api[index] = meter.create_histogram(
                spec.name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=self._bounds[index],
            ).record

    def _attributes(self, metric: int, key: AttrValues) -> dict[str, str]:
        cached = self._attrs.get((metric, key))
        if cached is None:
            cached = dict(zip(self._keys[metric], key, strict=True))
            self._attrs[(metric, key)] = cached
        return cached

    def _counter_callback(self, index: int) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                if not self._lock_for_collection(f"observing {mt.METRICS[index].name}"):
                    return []
                try:
                    totals = [(k, cell[0]) for k, cell in self._totals[index].items()]
                finally:
                    self._lock.release()
                return [Observation(v, self._attributes(index, k)) for k, v in totals]
            except Exception as exc:  # noqa: BLE001 - never break a collection
                self._failures.record(f"observing {mt.METRICS[index].name}", exc)
                return []

        return callback

    def _observable_callback(
        self, spec: mt.MetricSpec, observe: ObserveCallback
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        index = mt.METRIC_INDEX[spec.name]
        # Attribute sets seen before keep reporting 0 instead of vanishing, so a gauge
        # that drops to zero reads 0 in Prometheus rather than going stale.
        seen: set[AttrValues] = set()
        gauge = spec.kind is _GAUGE

        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            try:
                totals: dict[AttrValues, float] = dict.fromkeys(seen, 0.0)
                for value, raw in observe():
                    key, _ = self._admitted(index, raw)
                    if gauge:  # an age: values folded into one key keep the largest
                        totals[key] = max(totals.get(key, 0.0), value)
                    else:
                        totals[key] = totals.get(key, 0.0) + value
                    seen.add(key)
                return [Observation(v, self._attributes(index, k)) for k, v in totals.items()]
            except Exception as exc:  # noqa: BLE001 - never break a collection
                self._failures.record(f"observing {spec.name}", exc)
                return []

        return callback

    # -- recording -----------------------------------------------------------------------

    def emit(
        self, metric: int, value: float, attrs: AttrValues, span: SpanIds | None = None
    ) -> None:
        """Record one measurement (taken in the sampled span ``span``, if given).

        Never raises.
        """
        try:
            key, overflowed = self._admitted(metric, attrs)
            kind = self._kinds[metric]
            if kind is _HISTOGRAM and metric in self._via_api:
                self._record_via_api(metric, value, key, span)
            else:
                with self._lock:
                    if kind is _COUNTER:
                        cell = self._totals[metric].get(key)
                        if cell is None:
                            cell = self._totals[metric][key] = [0]
                        cell[0] += value
                    elif kind is _GAUGE:
                        self._totals[metric][key] = [value]
                    elif kind is _HISTOGRAM:
                        self._observe(metric, key, value, span)
                if overflowed is not None:
                    self._count_overflow(overflowed)
        except Exception as exc:  # noqa: BLE001 - metrics never raise into tasks
            self._failures.record("recording a measurement", exc)

    def task_ended(  # noqa: PLR0912, PLR0915 - one inlined hot path, see the docstring
        self,
        name: str,
        queue: str,
        state: str,
        runtime: float | None,
        *,
        span: SpanIds | None = None,
        wait: tuple[str, float] | None = None,
    ) -> None:
        """A task's terminal state, runtime and queue wait (``(wait_from, seconds)``).

        The per-task hot path, so written for speed: one lookup finds the task's
        counters and series (admitted, capped, created once per name and queue), one lock
        covers all three metrics, and the histogram updates are inlined (a helper call per
        update and min()/max() cost measurably more here).
        """
        try:
            pair = self._pairs.get((name, queue))
            if pair is None:
                pair = self._new_pair(name, queue)
            cells = pair.states.get(state)
            if cells is None:
                cells = self._pair_state(pair, state)
            cell, overflowed = cells.cell, cells.overflowed
            if runtime is not None and cells.runtime is None:
                self._state_runtime(pair, state, cells)
            wait_series = None
            if wait is not None:
                wait_series = pair.waits.get(wait[0])
                if wait_series is None:
                    wait_series = self._pair_wait(pair, wait[0])
            if self._via_api:
                with self._lock:
                    cell[0] += 1
                if runtime is not None:
                    self._record_via_api(_RUNTIME, runtime, cells.runtime_key, span)
                if wait is not None and wait_series is not None:
                    self._record_via_api(_QUEUE_WAIT, wait[1], wait_series[2], None)
            else:
                with self._lock:
                    cell[0] += 1
                    rseries = cells.runtime
                    if runtime is not None and rseries is not None:
                        bucket = bisect_left(self._runtime_bounds, runtime)
                        rseries.counts[bucket] += 1
                        rseries.total += runtime
                        rseries.count += 1
                        if runtime < rseries.min:  # noqa: PLR1730
                            rseries.min = runtime
                        if runtime > rseries.max:  # noqa: PLR1730
                            rseries.max = runtime
                        if self.track_interval:
                            rseries.interval(runtime)
                        if span is not None:
                            rseries.exemplar(bucket, runtime, span)
                    if wait_series is not None and wait is not None:
                        series, seconds = wait_series[0], wait[1]
                        series.counts[bisect_left(self._wait_bounds, seconds)] += 1
                        series.total += seconds
                        series.count += 1
                        if seconds < series.min:  # noqa: PLR1730
                            series.min = seconds
                        if seconds > series.max:  # noqa: PLR1730
                            series.max = seconds
                        if self.track_interval:
                            series.interval(seconds)
            if overflowed is not None:
                self._count_overflow(overflowed)
            if runtime is not None and cells.runtime_overflowed is not None:
                self._count_overflow(cells.runtime_overflowed)
            if wait_series is not None and wait_series[1] is not None:
                self._count_overflow(wait_series[1])
        except Exception as exc:  # noqa: BLE001 - metrics never raise into tasks
            self._failures.record("recording a task's outcome", exc)

    def task_received(self, name: str, queue: str) -> None:
        """A task message taken from the broker (per-task hot path, like task_ended)."""
        try:
            pair = self._pairs.get((name, queue))
            if pair is None:
                pair = self._new_pair(name, queue)
            with self._lock:
                pair.received[0] += 1
            if pair.received_overflowed is not None:
                self._count_overflow(pair.received_overflowed)
        except Exception as exc:  # noqa: BLE001 - metrics never raise into tasks
            self._failures.record("counting a received task", exc)

    def _new_pair(self, name: str, queue: str) -> _TaskPair:
        pair = _TaskPair(name, queue)
        rkey, pair.received_overflowed = self._admitted(_RECEIVED, (name, queue))
        with self._lock:
            cell = self._totals[_RECEIVED].get(rkey)
            if cell is None:
                cell = self._totals[_RECEIVED][rkey] = [0]
        pair.received = cell
        # Hostile input (a flood of distinct names) must not grow this without bound.
        if len(self._pairs) < 4 * self._settings.max_series_per_metric:
            self._pairs[(name, queue)] = pair
        return pair

    def _pair_state(self, pair: _TaskPair, state: str) -> _StateCells:
        key, overflowed = self._admitted(_TASKS, (pair.name, pair.queue, state))
        with self._lock:
            cell = self._totals[_TASKS].get(key)
            if cell is None:
                cell = self._totals[_TASKS][key] = [0]
        cells = pair.states[state] = _StateCells(cell, overflowed)
        return cells

    def _state_runtime(self, pair: _TaskPair, state: str, cells: _StateCells) -> None:
        key, overflowed = self._admitted(_RUNTIME, (pair.name, pair.queue, state))
        with self._lock:
            series = self._histograms[_RUNTIME].get(key)
            if series is None:
                series = self._new_series(_RUNTIME, key)
        cells.runtime_key, cells.runtime_overflowed = key, overflowed
        cells.runtime = series

    def _pair_wait(
        self, pair: _TaskPair, wait_from: str
    ) -> tuple[_Series, str | None, AttrValues]:
        key, overflowed = self._admitted(_QUEUE_WAIT, (pair.name, pair.queue, wait_from))
        with self._lock:
            series = self._histograms[_QUEUE_WAIT].get(key)
            if series is None:
                series = self._new_series(_QUEUE_WAIT, key)
        pair.waits[wait_from] = (series, overflowed, key)
        return series, overflowed, key

    def _new_series(self, metric: int, key: AttrValues) -> _Series:
        series = self._histograms[metric][key] = _Series(len(self._bounds[metric]))
        return series

    def _count_overflow(self, attribute: str) -> None:
        with self._lock:
            cell = self._totals[_OVERFLOW_ATTRIBUTE].get((attribute,))
            if cell is None:
                cell = self._totals[_OVERFLOW_ATTRIBUTE][(attribute,)] = [0]
            cell[0] += 1

    def emit_many(self, measurements: Iterable[Measurement]) -> None:
        """Record a batch (decoded from a pool child); a malformed entry is dropped."""
        for measurement in measurements:
            try:
                self.emit(measurement[0], measurement[1], tuple(measurement[2]))
            except Exception as exc:  # noqa: BLE001
                self._failures.record("recording a batch of measurements", exc)

    def _observe(self, metric: int, key: AttrValues, value: float, span: SpanIds | None) -> None:
        """Add one value to a histogram series. Called with the lock held."""
        series = self._histograms[metric].get(key)
        if series is None:
            series = self._new_series(metric, key)
        # Explicit buckets are upper-inclusive: a value equal to a bound belongs below it.
        bucket = bisect_left(self._bounds[metric], value)
        series.counts[bucket] += 1
        series.total += value
        series.count += 1
        series.min = min(series.min, value)
        series.max = max(series.max, value)
        if self.track_interval:
            series.interval(value)
        if span is not None:
            series.exemplar(bucket, value, span)

    def _record_via_api(
        self, metric: int, value: float, key: AttrValues, span: SpanIds | None
    ) -> None:
        context = None
        if span is not None:
            from opentelemetry.trace import (
                NonRecordingSpan,
                SpanContext,
                TraceFlags,
                set_span_in_context,
            )

            span_context = SpanContext(
                span[0], span[1], is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
            )
            context = set_span_in_context(NonRecordingSpan(span_context))
        self._via_api[metric](value, self._attributes(metric, key), context=context)

    # -- reading ---------------------------------------------------------------------------

    def histogram_points(self, reset_interval: bool = False) -> list[HistogramPoint]:
        """Every histogram series, cumulative since it first appeared.

        Exemplars are handed out once (the next collection gets only newer ones), as the
        SDK's own reservoirs do. ``reset_interval`` restarts the interval min/max (a delta
        reader collected).
        """
        points: list[HistogramPoint] = []
        if not self._lock_for_collection("reading histograms"):
            return points
        try:
            for metric, histograms in enumerate(self._histograms):
                if not histograms:
                    continue
                spec = mt.METRICS[metric]
                for key, s in histograms.items():
                    exemplars: tuple[tuple[float, int, int, int], ...] = ()
                    if s.exemplars is not None:
                        exemplars = tuple(e for e in s.exemplars if e is not None)
                        s.exemplars = None
                    points.append(
                        HistogramPoint(
                            spec, self._attributes(metric, key), self._bounds[metric],
                            s.start, tuple(s.counts), s.total, s.count, s.min, s.max,
                            s.imin, s.imax, exemplars,
                        )
                    )
                    if reset_interval:
                        s.imin, s.imax = float("inf"), float("-inf")
        finally:
            self._lock.release()
        return points

    def _lock_for_collection(self, what: str) -> bool:
        """Take the aggregates' lock for a collection, waiting a bounded time.

        Recording holds it for a few additions and never waits while holding it, so a
        timeout means a stuck holder; the collection then serves without these values
        instead of hanging the scrape or export, and the miss is counted.
        """
        if self._lock.acquire(timeout=_COLLECTION_LOCK_WAIT):
            return True
        self.collection_timed_out(what)
        return False

    def collection_timed_out(self, what: str) -> None:
        """A collection gave up a bounded wait (for ``what``) and served what it had.

        Counted as ``otel_celery_metrics_dropped_total{reason="collection_timeout"}``
        without taking the aggregates' lock (it may be the lock that was not free): this
        is the only writer of that cell, under a lock of its own. Logged once per ``what``.
        """
        with self._timeouts_lock:
            self._collection_timeouts[0] += 1
            first = what not in self._timeouts_logged
            self._timeouts_logged.add(what)
        if first:
            _logger.error(
                "otel-celery-metrics: a metric collection gave up %s after a bounded wait and "
                "served what it had; counted in %s{reason=\"collection_timeout\"}, logged once",
                what, mt.SELF_DROPPED.prometheus_name,
            )
