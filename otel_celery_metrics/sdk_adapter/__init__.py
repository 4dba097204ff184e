"""The only place that touches OpenTelemetry SDK internals: :class:`SdkAdapter` here,
:mod:`.pool_relay` for what the pool-child relay needs (pool children's readers and span
processors; its docstring lists those privates), and :mod:`.span_export` for relayed spans
as OTLP bytes (encoded in the child, batched by the worker's own span processor and OTLP
exporter), with :mod:`.otlp_wire`, the protobuf framing it assembles requests with.

One adapter per meter provider and instrumentation. Each change it makes is recorded with
what it replaced; :meth:`SdkAdapter.undo` puts every one back, so ``uninstrument()`` leaves
the provider as it found it and a second ``instrument()`` starts from a clean provider.
Each change can also be checked: :meth:`SdkAdapter.collection_problem` and
:meth:`SdkAdapter.silence_pool_child` say when one did not take effect (the instrumentor
then logs an ERROR and sets ``otel_celery_metrics_hook_inactive``).

The SDK has no public way to change a reader after construction, nor a public metric
producer API in the versions we support, so this module reads and writes these privates:

- ``MeterProvider._metric_readers`` and ``MeterProvider._sdk_config.resource`` (read);
- ``MetricReader._collect`` (the instance attribute ``MeterProvider`` sets through
  ``_set_collect_callback``): replaced by a wrapper that runs the collection inside the
  prefork fence, reads what pool children sent, and adds our self-aggregated histograms
  (:mod:`otel_celery_metrics.recording.histograms`, public SDK types only); undone;
- ``MetricReader._instrument_class_temporality`` (read): the temporality a reader wants for
  histograms (keyed by ``opentelemetry.sdk.metrics._internal.instrument._Histogram``) and,
  for the relayed series (:meth:`SdkAdapter.add_relayed`), counters and up-down counters;
- ``PrometheusMetricReader._collector._scope_info_enabled``
  (opentelemetry-exporter-prometheus): whether scrapes carry ``otel_scope_*`` labels; undone;
- in a prefork pool child only, ``PeriodicExportingMetricReader._exporter`` and its
  ``collect`` method: replaced so the child's inherited copy exports and collects nothing
  (the main process exports for everyone); a child never uninstruments, so not undone;
- the OTLP metric exporters' logger names (not code, but their internals): a filter that
  folds retry warnings into the final error (:class:`OneLinePerFailedExport`); undone.

Tested (``scripts/matrix``, ``ci/constraints-*.txt``) with opentelemetry-sdk 1.43.0 /
opentelemetry-exporter-prometheus 0.64b0 (the floor: the first exporter-prometheus whose
reader takes ``registry`` and ``scope_info_enabled``) and opentelemetry-sdk 1.45.2 /
exporter-prometheus 0.66b2.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.recording.histograms import HistogramProducer, HistogramSource

_logger = logging.getLogger(__name__)

Fence = Callable[[], contextlib.AbstractContextManager[None]]
#: Adds series to one reader's collection: ``(reader, metrics_data, delta_kinds)`` -> the
#: data to hand on, where ``delta_kinds`` says which of ``counter``, ``updown``,
#: ``histogram`` that reader wants as deltas (the pool-child relay's merged series).
Relayed = Callable[[Any, Any, frozenset[str]], Any]

#: Instrument kinds :data:`Relayed` producers distinguish, by SDK instrument class name.
_KIND_OF_CLASS = {"_Counter": "counter", "_UpDownCounter": "updown", "_Histogram": "histogram"}

#: Loggers of the OTLP metric exporters (the gRPC base exporter is shared with traces, so
#: its span-export retries are folded the same way).
OTLP_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)


def _sdk_readers(provider: Any) -> tuple[Any, ...] | None:
    """The readers of an SDK meter provider; None if ``provider`` is not the SDK's."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    except ImportError:
        return None
    if not isinstance(provider, SdkMeterProvider):
        return None
    return tuple(getattr(provider, "_metric_readers", None) or ())


class SdkAdapter:
    """Every change we make to one SDK meter provider, checked and undoable.

    Construction only reads the provider: :attr:`hookable` says whether readers'
    collections can be hooked (else histograms go through the metrics API and
    :attr:`problem` says why, when the provider is the SDK's), :attr:`delta_readers` how
    many readers want delta histograms. :meth:`apply` makes the changes.
    """

    def __init__(self, provider: Any, scope_name: str, scope_version: str) -> None:
        self._provider = provider
        self._scope_name = scope_name
        self._scope_version = scope_version
        self._undo: list[Callable[[], None]] = []
        self._producers: list[tuple[Any, Callable[..., Any], HistogramProducer]] = []
        readers = _sdk_readers(provider)
        self.is_sdk = readers is not None
        self._readers: tuple[Any, ...] = readers or ()
        self.problem: str | None = None
        self._temporality: dict[int, bool] = {}
        self._delta_kinds: dict[int, frozenset[str]] = {}
        self._relayed: list[Relayed] = []
        if readers is not None:
            self.problem = self._inspect(readers)
        self.hookable = self.is_sdk and self.problem is None and bool(self._readers)
        self.delta_readers = sum(self._temporality.values())

    def _inspect(self, readers: tuple[Any, ...]) -> str | None:
        if not isinstance(getattr(self._provider, "_metric_readers", None), (list, tuple)):
            return "MeterProvider._metric_readers is missing"
        try:
            from opentelemetry.sdk.metrics._internal.instrument import _Histogram
            from opentelemetry.sdk.metrics.export import AggregationTemporality
        except ImportError as exc:
            return f"this SDK has no {exc.name}"
        if getattr(getattr(self._provider, "_sdk_config", None), "resource", None) is None:
            return "MeterProvider._sdk_config.resource is missing"
        for reader in readers:
            name = type(reader).__name__
            if not callable(getattr(reader, "_collect", None)):
                return f"{name}._collect is missing or not callable"
            temporality = getattr(reader, "_instrument_class_temporality", None)
            if not isinstance(temporality, dict):
                return f"{name}._instrument_class_temporality is missing"
            self._temporality[id(reader)] = (
                temporality.get(_Histogram) is AggregationTemporality.DELTA
            )
            self._delta_kinds[id(reader)] = frozenset(
                _KIND_OF_CLASS[cls.__name__] for cls, wanted in temporality.items()
                if cls.__name__ in _KIND_OF_CLASS and wanted is AggregationTemporality.DELTA
            )
        return None

    # -- applying --------------------------------------------------------------------------

    def apply(
        self,
        histograms: HistogramSource,
        before_collect: Callable[[], None],
        fence: Fence,
        scope_labels: bool,
    ) -> None:
        """Hook every reader's collection (when :attr:`hookable`), set the Prometheus
        readers' scope labels, fold the OTLP exporters' retry logs."""
        if self.hookable:
            resource = self._provider._sdk_config.resource
            for reader in self._readers:
                producer = HistogramProducer(
                    histograms, self._scope_name, self._scope_version, resource,
                    self._temporality[id(reader)],
                )
                self._hook_collect(reader, producer, before_collect, fence)
        self._set_scope_labels(scope_labels)
        self._fold_exporter_logs()

    def _hook_collect(
        self, reader: Any, producer: HistogramProducer, before_collect: Callable[[], None],
        fence: Fence,
    ) -> None:
        original = reader._collect
        active = True
        kinds = self._delta_kinds.get(id(reader), frozenset())
        relayed = self._relayed

        def collect_with_ours(*args: Any, **kwargs: Any) -> Any:
            if not active:  # undone, but another hook wrapped ours since: pass through
                return original(*args, **kwargs)
            # The fence keeps a fork out of the whole collection, the SDK's and ours.
            with fence():
                try:
                    before_collect()
                except Exception:
                    _logger.debug("reading pool children before a collection failed",
                                  exc_info=True)
                data = producer.merge_into(original(*args, **kwargs))
                for produce in relayed:
                    data = produce(reader, data, kinds)
                return data

        reader._collect = collect_with_ours
        self._producers.append((reader, collect_with_ours, producer))

        def restore() -> None:
            nonlocal active
            active = False
            # Only if nobody replaced it since: never clobber a later hook.
            if reader._collect is collect_with_ours:
                reader._collect = original

        self._undo.append(restore)

    def _set_scope_labels(self, enabled: bool) -> None:
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
        except ImportError:
            return
        for reader in self._readers:
            if not isinstance(reader, PrometheusMetricReader):
                continue
            collector = getattr(reader, "_collector", None)
            if collector is None or not hasattr(collector, "_scope_info_enabled"):
                _logger.warning(
                    "otel-celery-metrics: cannot set scope labels on this "
                    "opentelemetry-exporter-prometheus version; leaving its default"
                )
                continue
            self._undo.append(_setter(collector, collector._scope_info_enabled))
            collector._scope_info_enabled = enabled

    def _fold_exporter_logs(self) -> None:
        # One line per failed export while the Collector is unreachable, not one per retry.
        log_filter = OneLinePerFailedExport()
        for name in OTLP_EXPORTER_LOGGERS:
            logger = logging.getLogger(name)
            if any(isinstance(f, OneLinePerFailedExport) for f in logger.filters):
                continue  # another instrumentation's adapter folds them already
            logger.addFilter(log_filter)
            self._undo.append(_filter_remover(logger, log_filter))

    def add_relayed(self, produce: Relayed) -> int:
        """Every hooked reader's collection also goes through ``produce`` (after ours),
        until :meth:`undo`. Returns how many readers that is (0 when not hookable)."""
        if not self._producers:
            return 0
        self._relayed.append(produce)
        self._undo.append(lambda: self._relayed.remove(produce))
        return len(self._producers)

    # -- checking --------------------------------------------------------------------------

    def collection_problem(self) -> str | None:
        """Why our histograms would not appear in this provider's collections, or None.

        A probe point is built and merged as a collection would; no reader collects (an
        OTLP reader would export).
        """
        if not self.is_sdk:
            return None  # not the SDK's provider: histograms go through the metrics API
        if self.problem is not None:
            return self.problem
        hooked = {id(reader) for reader, _, _ in self._producers}
        problems = [
            f"{type(reader).__name__} was added after instrumenting; not hooked"
            for reader in _sdk_readers(self._provider) or ()
            if id(reader) not in hooked
        ]
        for reader, hook, producer in self._producers:
            if reader._collect is not hook:
                problems.append(
                    f"{type(reader).__name__}._collect was replaced after we hooked it"
                )
            elif producer.last_error is not None:
                problems.append(f"the last collection failed: {producer.last_error!r}")
        if not problems and self._producers:
            problem = self._producers[0][2].self_check()
            if problem is not None:
                problems.append(problem)
        return "; ".join(problems) or None

    # -- pool children ---------------------------------------------------------------------

    def silence_pool_child(self) -> str | None:
        """In a forked pool child: the inherited periodic readers export and collect nothing.

        The SDK restarts a periodic reader's thread in every child (``register_at_fork``),
        so each child would export the main process' pre-fork values again, under the same
        identity, and conflict with the main process' cumulative series; and a collection
        there takes the SDK's locks (and ours) for nothing. Returns why a reader could not
        be silenced, or None.
        """
        try:
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        except ImportError:
            return None
        for reader in self._readers:
            if not isinstance(reader, PeriodicExportingMetricReader):
                continue
            if not hasattr(reader, "_exporter"):
                return f"{type(reader).__name__}._exporter is missing"
            reader._exporter = _NullExporter()  # type: ignore[assignment]
            reader.collect = _no_collection  # type: ignore[misc,method-assign]
            if not isinstance(reader._exporter, _NullExporter):
                return f"{type(reader).__name__}._exporter cannot be replaced"
        return None

    # -- undoing ---------------------------------------------------------------------------

    def undo(self) -> None:
        """Put back everything :meth:`apply` changed, newest first."""
        while self._undo:
            self._undo.pop()()
        self._producers.clear()


def _setter(collector: Any, value: bool) -> Callable[[], None]:
    def restore() -> None:
        collector._scope_info_enabled = value

    return restore


def _filter_remover(logger: logging.Logger, log_filter: logging.Filter) -> Callable[[], None]:
    return lambda: logger.removeFilter(log_filter)


class _NullExporter:
    """Stands in for a pool child's copy of a metric exporter: exports nothing."""

    def export(self, *_args: Any, **_kwargs: Any) -> Any:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        return MetricExportResult.SUCCESS

    def force_flush(self, *_args: Any, **_kwargs: Any) -> bool:
        return True

    def shutdown(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def _no_collection(*_args: Any, **_kwargs: Any) -> None:
    return None


class OneLinePerFailedExport(logging.Filter):
    """Folds the OTLP exporter's retry warnings into its final error: one line per export.

    With the Collector down, every export logs "Transient error ... retrying" for each
    retry and then "Failed to export ..." (which, for http/protobuf, does not say why).
    The retry warnings are held back; the last one's text (the reason, and the endpoint
    for gRPC) is appended to the final error. An operator sees one line per failed export
    interval that says what failed and why, and nothing per task.
    """

    def __init__(self) -> None:
        super().__init__()
        self._last_retry: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        if record.levelno == logging.WARNING and message.startswith("Transient error"):
            self._last_retry[record.name] = message
            return False
        last = self._last_retry.pop(record.name, None)
        if last is not None and record.levelno >= logging.ERROR:
            record.msg = f"{message} Last retry: {last}"
            record.args = ()
        return True
