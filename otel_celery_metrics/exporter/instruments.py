"""The exporter's state as OpenTelemetry instruments behind a Prometheus reader.

Two meter providers share one ``prometheus_client`` registry:

- the *histogram* provider holds the synchronous histograms (runtime, queue wait); their
  buckets accumulate in the SDK and live as long as the exporter;
- the *observable* provider holds every counter and gauge as an observable instrument
  reading the store, liveness and probes at scrape time. The SDK keeps one aggregation
  per attribute set an observable instrument ever reported (and folds everything past
  2000 into an overflow series), so with churning worker hostnames that memory would
  only grow. :meth:`Instruments.rebuild_observables` therefore replaces this provider
  when many workers have been forgotten; nothing is lost, the values live in our store.

Both providers get their readers from :class:`~.outputs.Outputs`: the Prometheus reader
on the registry ``/metrics`` serves, the OTLP reader, or both; ``--static-label`` labels
are added here, to every attribute set, so both outputs carry them.

The names, units, descriptions and buckets come from the metric table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.exporter import compat
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.handlers import EventHandlers
from otel_celery_metrics.exporter.liveness import Liveness
from otel_celery_metrics.exporter.outputs import Outputs
from otel_celery_metrics.exporter.probes import ProbeResult
from otel_celery_metrics.exporter.receiver import ReceiverStatus
from otel_celery_metrics.exporter.store import Caps, Counters, CounterStore, Key

METER_NAME = "otel_celery_metrics.exporter"
Callback = Callable[[CallbackOptions], Iterable[Observation]]
_CACHE_LIMIT = 4000


class Histograms:
    """The handlers' :class:`~.handlers.HistogramSink`, with attribute dicts cached."""

    def __init__(self, provider: MeterProvider, config: ExporterConfig) -> None:
        meter = provider.get_meter(METER_NAME)
        self._runtime = meter.create_histogram(
            mt.TASK_RUNTIME.name, unit=mt.TASK_RUNTIME.unit,
            description=mt.TASK_RUNTIME.description,
            explicit_bucket_boundaries_advisory=config.buckets,
        )
        self._wait = meter.create_histogram(
            mt.TASK_QUEUE_WAIT.name, unit=mt.TASK_QUEUE_WAIT.unit,
            description=mt.TASK_QUEUE_WAIT.description,
            explicit_bucket_boundaries_advisory=config.queue_wait_buckets,
        )
        self._compat = None
        if config.danihodovic_names:
            self._compat = meter.create_histogram(
                compat.RUNTIME_HISTOGRAM, unit="",
                description="Histogram of task runtime measurements.",
                explicit_bucket_boundaries_advisory=config.buckets,
            )
        self._attrs: dict[Key, dict[str, str]] = {}
        self._static = dict(config.static_labels)

    def _cached(self, key: Key, names: tuple[str, ...]) -> dict[str, str]:
        attrs = self._attrs.get(key)
        if attrs is None:
            attrs = {**dict(zip(names, key[1:], strict=True)), **self._static}
            if len(self._attrs) < _CACHE_LIMIT:
                self._attrs[key] = attrs
        return attrs

    def runtime(
        self, name: str, queue: str, state: str, hostname: str, seconds: float
    ) -> None:
        self._runtime.record(
            seconds, self._cached(("r", name, queue, state), (mt.TASK_NAME, mt.QUEUE, mt.STATE))
        )
        if self._compat is not None:
            self._compat.record(
                seconds, self._cached(("c", name, queue, hostname), compat.TASK_LABELS)
            )

    def queue_wait(self, name: str, queue: str, wait_from: str, seconds: float) -> None:
        attrs = self._cached(("w", name, queue, wait_from), (mt.TASK_NAME, mt.QUEUE, mt.WAIT_FROM))
        self._wait.record(seconds, attrs)


def _from_counters(counters: Counters, names: tuple[str, ...]) -> Callback:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(v, dict(zip(names, k, strict=False)))
            for k, v in counters.snapshot().items()
        ]

    return callback


def _from_mapping(read: Callable[[], Mapping[str, float]], label: str) -> Callback:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, {label: k}) for k, v in read().items()]

    return callback


def _with_static(callback: Callback, static: Mapping[str, str]) -> Callback:
    if not static:
        return callback

    def labelled(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(o.value, {**(o.attributes or {}), **static})
                for o in callback(options)]

    return labelled


def _single(read: Callable[[], float]) -> Callback:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    return callback


class Sources:
    """Everything the observable instruments read at scrape time."""

    def __init__(
        self,
        *,
        counters: CounterStore,
        caps: Caps,
        handlers: EventHandlers,
        liveness: Liveness,
        receiver: ReceiverStatus,
        queue_probe: Callable[[], ProbeResult],
        inspect_probe: Callable[[], ProbeResult],
        queue_names: Callable[[], list[str]],
        clock: Callable[[], float],
        event_stream: bool = True,
    ) -> None:
        self.queue_names = queue_names
        #: False in probe-only mode: the series that only events or broadcasts can feed
        #: are not offered (an empty or -1 series would read as "nothing happened").
        self.event_stream = event_stream
        self.counters = counters
        self.caps = caps
        self.handlers = handlers
        self.liveness = liveness
        self.receiver = receiver
        self.queue_probe = queue_probe
        self.inspect_probe = inspect_probe
        self.clock = clock


def histogram_provider(outputs: Outputs) -> MeterProvider:
    """The meter provider the event handlers' histograms record into, read by the outputs
    (``/metrics`` with ``target_info``, OTLP); :class:`Instruments` takes it and shuts it
    down.

    Made before the handlers, which need it, and before :class:`Instruments`, whose
    observables read the handlers: each object gets what it needs when it is built."""
    return MeterProvider(resource=outputs.resource,
                         metric_readers=outputs.readers(target_info=True))


class Instruments:
    def __init__(
        self, config: ExporterConfig, outputs: Outputs, sources: Sources,
        histograms: MeterProvider,
    ) -> None:
        self._config = config
        self._outputs = outputs
        self._sources = sources
        #: Held while a scrape collects and while the observable provider is replaced,
        #: so no scrape sees both or neither.
        self.collect_lock = threading.Lock()
        self.histogram_provider = histograms
        self._observable_provider = self._build_observables()
        self.rebuilds = 0

    def rebuild_observables(self) -> bool:
        """Replace the observable provider; False (and nothing done) when the outputs
        cannot take it (OTLP delta: the new provider would send every total again)."""
        if not self._outputs.rebuild_safe:
            return False
        with self.collect_lock:
            old = self._observable_provider
            old.shutdown()  # unregisters its collector from the registry
            self._observable_provider = self._build_observables()
            self.rebuilds += 1
        return True

    def shutdown(self) -> None:
        with self.collect_lock:
            self._observable_provider.shutdown()
            self.histogram_provider.shutdown()

    # -- the observable side ---------------------------------------------------------------

    def _build_observables(self) -> MeterProvider:
        # target_info comes from the histogram provider's reader; twice would be invalid.
        provider = MeterProvider(resource=self._outputs.resource,
                                 metric_readers=self._outputs.readers(target_info=False))
        meter = provider.get_meter(METER_NAME)
        static = dict(self._config.static_labels)
        for name, unit, description, callback, kind in self._observables():
            create = {
                "counter": meter.create_observable_counter,
                "updown": meter.create_observable_up_down_counter,
                "gauge": meter.create_observable_gauge,
            }[kind]
            create(name, callbacks=[_with_static(callback, static)], unit=unit,
                   description=description)
        return provider

    def _observables(self) -> list[tuple[str, str, str, Callback, str]]:
        cfg, src = self._config, self._sources
        out: list[tuple[str, str, str, Callback, str]] = []

        def add(spec: mt.MetricSpec, callback: Callback) -> None:
            kind = {
                mt.InstrumentKind.COUNTER: "counter",
                mt.InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER: "updown",
            }.get(spec.kind, "gauge")
            out.append((spec.name, spec.unit, spec.description, callback, kind))

        if src.event_stream:
            self._event_observables(add, out)
        add(mt.QUEUE_MESSAGES, _from_mapping(self._queue_messages, mt.QUEUE))
        if src.event_stream:
            add(mt.QUEUE_OLDEST_MESSAGE_AGE, _from_mapping(self._oldest_message_age, mt.QUEUE))
            add(mt.QUEUE_UNACKED, _from_mapping(self._unacked(due=True), mt.QUEUE))
            add(mt.QUEUE_UNACKED_SCHEDULED, _from_mapping(self._unacked(due=False), mt.QUEUE))
        else:
            add(mt.QUEUE_IN_FLIGHT, _from_mapping(lambda: src.queue_probe().in_flight, mt.QUEUE))
            add(mt.QUEUE_DELAYED, _from_mapping(lambda: src.queue_probe().delayed, mt.QUEUE))
        add(mt.QUEUE_CONSUMERS, _from_mapping(self._queue_consumers, mt.QUEUE))
        if src.event_stream:
            add(mt.QUEUE_WORKERS, _from_mapping(lambda: self._per_queue(0), mt.QUEUE))
            add(mt.QUEUE_PROCESSES, _from_mapping(lambda: self._per_queue(1), mt.QUEUE))
        if cfg.danihodovic_names:
            label = compat.QUEUE_LABEL
            compat_queue_series = [
                (compat.QUEUE_LENGTH, self._queue_messages),
                (compat.ACTIVE_CONSUMERS, self._queue_consumers),
            ]
            if src.event_stream:
                compat_queue_series += [
                    (compat.ACTIVE_WORKERS, lambda: self._per_queue(0)),
                    (compat.ACTIVE_PROCESSES, lambda: self._per_queue(1)),
                ]
            for name, read in compat_queue_series:
                out.append((name, "", name.replace("_", " "), _from_mapping(read, label), "gauge"))
        add(mt.EXPORTER_BROKER_CONNECTED, _single(lambda: int(src.receiver.connected)))
        add(mt.EXPORTER_EVENT_STREAM, _single(lambda: int(src.event_stream)))
        add(mt.EXPORTER_PROBE_AGE, _from_mapping(self._probe_ages, mt.PROBE))
        if not src.event_stream:
            return out
        add(mt.EXPORTER_RECONNECTS, _single(lambda: src.receiver.reconnects))
        add(mt.EXPORTER_EVENTS_RECEIVED, _from_counters(
            src.counters.counter(mt.EXPORTER_EVENTS_RECEIVED.name), (mt.EVENT_TYPE,)))
        add(mt.EXPORTER_EVENTS_DROPPED, _from_counters(
            src.counters.counter(mt.EXPORTER_EVENTS_DROPPED.name), (mt.EVENT_TYPE, mt.REASON)))
        add(mt.EXPORTER_MEASUREMENTS_DROPPED, _from_counters(
            src.counters.counter(mt.EXPORTER_MEASUREMENTS_DROPPED.name), (mt.REASON,)))
        add(mt.EXPORTER_LAST_EVENT_AGE, _single(self._last_event_age))
        add(mt.EXPORTER_WORKERS_WITHOUT_TASK_EVENTS,
            _single(lambda: len(src.liveness.without_task_events())))
        return out

    def _event_observables(
        self, add: Callable[[mt.MetricSpec, Callback], None],
        out: list[tuple[str, str, str, Callback, str]],
    ) -> None:
        """The series fed by task and worker events and by inspect replies."""
        cfg, src = self._config, self._sources
        task_labels = (mt.TASK_NAME, mt.QUEUE, mt.HOSTNAME)
        for spec in mt.EXPORTER_METRICS[:8]:  # the per-event task counters
            counters = src.counters.counter(spec.name)
            if cfg.danihodovic_names:
                failed = spec is mt.EVENTS_TASK_FAILED
                labels = compat.FAILED_LABELS if failed else compat.TASK_LABELS
                out.append((compat.COUNTER_NAMES[spec.name], "", spec.description,
                            _from_counters(counters, labels), "counter"))
            else:
                add(spec, _from_counters(counters, task_labels))
        for spec in (mt.TASKS, mt.TASK_FAILURES, mt.TASKS_PUBLISHED, mt.TASKS_RECEIVED):
            add(spec, _from_counters(src.counters.counter(spec.name), spec.attributes))
        add(mt.TASKS_EXECUTING, _from_counters(_Live(lambda: src.handlers.executing),
                                           (mt.TASK_NAME, mt.QUEUE)))
        add(mt.SELF_OVERFLOW, _from_counters(_Live(lambda: src.caps.overflow), (mt.ATTRIBUTE,)))
        add(mt.WORKER_UP, _from_mapping(src.liveness.up, mt.HOSTNAME))
        add(mt.WORKER_TASKS_ACTIVE, _from_mapping(src.liveness.active, mt.HOSTNAME))
        add(mt.WORKER_PROCESSES, _from_mapping(src.liveness.processes, mt.HOSTNAME))
        add(mt.WORKER_UTILISATION, _from_mapping(self._utilisation, mt.HOSTNAME))

    def _queue_messages(self) -> dict[str, float]:
        return {q: m for q, (m, _) in self._sources.queue_probe().values.items()}

    def _unacked(self, *, due: bool) -> Callable[[], dict[str, float]]:
        """Redis: the unacked counts of every probed queue (0 where none); RabbitMQ: none."""
        def read() -> dict[str, float]:
            result = self._sources.queue_probe()
            if result.taken_at is None or not self._config.broker_url.startswith("redis"):
                return {}
            counts = result.unacked if due else result.unacked_scheduled
            return {q: float(counts.get(q, 0)) for q in result.values}
        return read

    def _oldest_message_age(self) -> dict[str, float]:
        """The probe's ages, grown by the time since it took them (an empty queue stays 0
        until the next probe)."""
        result = self._sources.queue_probe()
        if result.taken_at is None:
            return {}
        since = max(0.0, self._sources.clock() - result.taken_at)
        return {q: age + since if age else 0.0 for q, age in result.oldest_age.items()}

    def _utilisation(self) -> dict[str, float]:
        active, processes = self._sources.liveness.active(), self._sources.liveness.processes()
        return {h: active[h] / n for h, n in processes.items() if n and h in active}

    def _queue_consumers(self) -> dict[str, float]:
        return {q: c for q, (_, c) in self._sources.queue_probe().values.items() if c is not None}

    def _per_queue(self, index: int) -> dict[str, float]:
        # The probed queues: discovered plus --queues, after the allow/deny lists and the
        # queue cap, so a worker consuming hundreds of queues cannot flood the series.
        per_queue = self._sources.liveness.per_queue()
        return {q: per_queue.get(q, (0, 0))[index] for q in self._sources.queue_names()}

    def _last_event_age(self) -> float:
        last = self._sources.handlers.last_event_at
        return -1.0 if last is None else max(0.0, self._sources.clock() - last)

    def _probe_ages(self) -> dict[str, float]:
        now = self._sources.clock()
        out = {}
        probes = [("queues", self._sources.queue_probe)]
        if self._sources.event_stream:  # no inspect probe runs without broadcasts
            probes.append(("inspect", self._sources.inspect_probe))
        for name, read in probes:
            taken = read().taken_at
            out[name] = -1.0 if taken is None else max(0.0, now - taken)
        return out


class _Live(Counters):
    """Adapts a plain dict the handlers own to the :class:`Counters` snapshot interface."""

    def __init__(self, read: Callable[[], dict[Key, Any]]) -> None:
        super().__init__("live")
        self._read = read

    def snapshot(self) -> dict[Key, float]:
        return dict(self._read())
