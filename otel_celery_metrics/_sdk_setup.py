"""The only module that touches the OpenTelemetry SDK.

Five jobs:
- :func:`attach_histograms`: hand the histograms :class:`~otel_celery_metrics._recorder.Recorder`
  aggregates itself to every metric reader of the SDK meter provider at collection time
  (the OpenTelemetry "metric producer" idea; this SDK has no public producer API);
- :func:`setup_metrics`: the short in-code setup for applications that configure
  OpenTelemetry themselves instead of running ``opentelemetry-instrument``;
- :func:`tune_prometheus_readers`: our deliberate choice for the Prometheus path under
  ``opentelemetry-instrument`` (no ``otel_scope_*`` labels, see ``docs/configuration.md``);
- :func:`silence_exporting_readers`: in a prefork pool child, stop the child's copy of a
  periodic (OTLP/console) reader from collecting and exporting; the main process exports
  for everyone;
- :func:`fence_collections`: run every collection inside the prefork bridge's fence, so
  that no fork copies the SDK's locks mid-collection.

The functions that adjust existing readers reach into SDK internals (the SDK has no
public way to change a reader after construction). They check what they touch and, when
the SDK changed shape, log once and leave the reader as it is.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from otel_celery_metrics.settings import Settings

if TYPE_CHECKING:
    from otel_celery_metrics._recorder import HistogramPoint

_logger = logging.getLogger("otel_celery_metrics")


def _readers(provider: Any) -> Sequence[Any]:
    readers = getattr(provider, "_metric_readers", None)
    if readers is None:
        sdk_config = getattr(provider, "_sdk_config", None)
        readers = getattr(sdk_config, "metric_readers", ())
    return tuple(readers or ())


def tune_prometheus_readers(provider: Any, scope_labels: bool) -> int:
    """Set whether ``provider``'s Prometheus readers add ``otel_scope_*`` labels.

    Returns how many readers were adjusted.
    """
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
    except ImportError:
        return 0
    tuned = 0
    for reader in _readers(provider):
        if not isinstance(reader, PrometheusMetricReader):
            continue
        collector = getattr(reader, "_collector", None)
        if collector is None or not hasattr(collector, "_scope_info_enabled"):
            _logger.warning(
                "otel-celery-metrics: cannot set scope labels on this "
                "opentelemetry-exporter-prometheus version; leaving its default"
            )
            continue
        collector._scope_info_enabled = scope_labels
        tuned += 1
    return tuned


HistogramSource = Callable[[bool], "Sequence[HistogramPoint]"]


def attach_histograms(
    provider: Any, source: HistogramSource, scope_name: str, scope_version: str
) -> int | None:
    """Make every reader of ``provider`` include ``source``'s histograms when it collects.

    ``source(reset_interval)`` returns cumulative :class:`HistogramPoint` s. Each reader
    gets them in its preferred temporality (cumulative, or delta against what that
    reader was handed last time) inside the instrumentation scope ``scope_name``.
    Returns how many of the readers want delta temporality; None, changing nothing, when
    ``provider`` is not an SDK meter provider with readers this can hook (the caller then
    records histograms through the API).
    """
    try:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics._internal.instrument import _Histogram
        from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader
    except ImportError:
        return None
    if not isinstance(provider, SdkMeterProvider):
        return None
    readers = _readers(provider)
    if not readers or not all(
        isinstance(r, MetricReader) and callable(getattr(r, "_collect", None))
        and isinstance(getattr(r, "_instrument_class_temporality", None), dict)
        for r in readers
    ):
        return None
    resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    if resource is None:
        return None
    deltas = 0
    for reader in readers:
        delta = (
            reader._instrument_class_temporality.get(_Histogram)
            is AggregationTemporality.DELTA
        )
        producer = _HistogramProducer(source, scope_name, scope_version, resource, delta)
        reader._collect = producer.wrap(reader._collect)
        deltas += delta
    return deltas


def fence_collections(
    provider: Any, collecting: Callable[[], contextlib.AbstractContextManager[None]]
) -> int:
    """Run every collection of ``provider``'s SDK readers inside ``collecting()``.

    The prefork bridge uses it to keep forks out of collections (see
    :class:`~otel_celery_metrics._prefork.CollectionFence`). Wraps the reader's collect
    callback, outside :func:`attach_histograms`' wrapper, so the fence covers the SDK's
    collection and ours. Returns how many readers are fenced.
    """
    try:
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    except ImportError:
        return 0
    if not isinstance(provider, SdkMeterProvider):
        return 0
    fenced = 0
    for reader in _readers(provider):
        collect = getattr(reader, "_collect", None)
        if not callable(collect):
            continue
        reader._collect = _fenced(collect, collecting)
        fenced += 1
    return fenced


def _fenced(
    collect: Callable[..., Any], collecting: Callable[[], contextlib.AbstractContextManager[None]]
) -> Callable[..., Any]:
    def fenced_collect(*args: Any, **kwargs: Any) -> Any:
        with collecting():
            return collect(*args, **kwargs)

    return fenced_collect


_Cumulative = tuple[tuple[int, ...], float, int]  # bucket counts, sum, count


class _HistogramProducer:
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

    def wrap(self, collect: Callable[..., Any]) -> Callable[..., Any]:
        def collect_with_histograms(reader: Any, timeout_millis: float = 10_000) -> Any:
            data = collect(reader, timeout_millis=timeout_millis)
            try:
                return self._merge(data)
            except Exception as exc:
                if not self._failed_once:
                    self._failed_once = True
                    _logger.error(
                        "otel-celery-metrics: adding task histograms to a collection failed "
                        "(%s: %s); logged once", type(exc).__name__, exc, exc_info=exc,
                    )
                return data

        return collect_with_histograms

    def _metrics(self) -> list[Any]:
        from opentelemetry.sdk.metrics._internal.exemplar import Exemplar
        from opentelemetry.sdk.metrics.export import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
        )

        now = time.time_ns()
        by_name: dict[str, tuple[Any, list[Any]]] = {}
        for p in self._source(self._delta):
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

    def _merge(self, data: Any) -> Any:
        from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics

        ours = self._metrics()
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


class _NullExporter:
    """Stands in for a pool child's copy of a metric exporter: exports nothing."""

    def export(self, *_args: Any, **_kwargs: Any) -> Any:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        return MetricExportResult.SUCCESS

    def force_flush(self, *_args: Any, **_kwargs: Any) -> bool:
        return True

    def shutdown(self, *_args: Any, **_kwargs: Any) -> None:
        return None


def silence_exporting_readers(provider: Any) -> int:
    """In a forked pool child: make the inherited periodic readers export nothing.

    The SDK restarts a periodic reader's thread in every child (``register_at_fork``), so
    each child would export the main process' pre-fork values again, under the same
    identity, and conflict with the main process' cumulative series.
    """
    try:
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    except ImportError:
        return 0
    silenced = 0
    for reader in _readers(provider):
        if isinstance(reader, PeriodicExportingMetricReader) and hasattr(reader, "_exporter"):
            reader._exporter = _NullExporter()  # type: ignore[assignment]
            # Nor collect: the child's copy of the provider holds the main process'
            # pre-fork values, and a collection takes the SDK's locks (and ours) for
            # nothing every interval in every child.
            reader.collect = _no_collection  # type: ignore[misc,method-assign]
            silenced += 1
    return silenced


def _no_collection(*_args: Any, **_kwargs: Any) -> None:
    return None


#: Loggers of the OTLP metric exporters (the gRPC base exporter is shared with traces, so
#: its span-export retries are folded the same way).
OTLP_EXPORTER_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.exporter",
)


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


def limit_exporter_logs() -> OneLinePerFailedExport:
    """Install :class:`OneLinePerFailedExport` on the OTLP exporters' loggers (idempotent)."""
    log_filter = OneLinePerFailedExport()
    for name in OTLP_EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        for existing in list(logger.filters):
            if isinstance(existing, OneLinePerFailedExport):
                logger.removeFilter(existing)
        logger.addFilter(log_filter)
    return log_filter


def _prometheus_reader(host: str, port: int, scope_labels: bool, registry: Any) -> Any:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    reader = PrometheusMetricReader(scope_info_enabled=scope_labels, registry=registry)
    try:
        start_http_server(port=port, addr=host, registry=registry)
    except OSError as exc:
        # Tasks must still run: report once, clearly, and carry on without an endpoint.
        _logger.error(  # one line, no traceback: a busy port is not a bug
            "otel-celery-metrics: cannot serve /metrics on %s:%s (%s); tasks keep running "
            "but this worker's metrics are not served. Choose a free port.",
            host, port, exc.strerror or exc,
        )
    return reader


def setup_metrics(
    exporter: str = "prometheus",
    *,
    service_name: str | None = None,
    resource_attributes: Mapping[str, str] | None = None,
    prometheus_host: str = "0.0.0.0",
    prometheus_port: int = 9809,
    otlp_endpoint: str | None = None,
    export_interval_seconds: float = 60.0,
    settings: Settings | None = None,
    registry: Any = None,
    set_global: bool = True,
    instrument: bool = True,
) -> Any:
    """Configure a MeterProvider with one way out and instrument Celery with it.

    Call it in the worker's main process before the pool starts, e.g. from a
    ``celeryd_init`` or ``worker_init`` receiver. ``exporter`` is ``"prometheus"``
    (serves ``/metrics`` on ``prometheus_host:prometheus_port``), ``"otlp"``
    (http/protobuf to ``otlp_endpoint``, default ``http://localhost:4318``) or
    ``"console"``. Returns the provider.
    """
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource

    settings = settings or Settings()
    attrs: dict[str, str] = dict(resource_attributes or {})
    if service_name:
        attrs["service.name"] = service_name
    resource = Resource.create(attrs)
    interval_ms = export_interval_seconds * 1000
    reader: Any
    if exporter == "prometheus":
        if registry is None:
            from prometheus_client import CollectorRegistry

            registry = CollectorRegistry()
        if settings.web_config_file:  # TLS and basic auth: see _prometheus_web
            from otel_celery_metrics._prometheus_web import guarded_prometheus_reader

            reader = guarded_prometheus_reader(
                prometheus_host, prometheus_port, settings.prometheus_scope_labels, registry,
                settings.web_config_file,
            )
        else:
            reader = _prometheus_reader(
                prometheus_host, prometheus_port, settings.prometheus_scope_labels, registry
            )
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        endpoint = (otlp_endpoint or "http://localhost:4318").rstrip("/") + "/v1/metrics"
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=endpoint), export_interval_millis=interval_ms
        )
    elif exporter == "console":
        reader = PeriodicExportingMetricReader(
            ConsoleMetricExporter(), export_interval_millis=interval_ms
        )
    else:
        msg = f'exporter must be "prometheus", "otlp" or "console": {exporter!r}'
        raise ValueError(msg)
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    if set_global:
        metrics.set_meter_provider(provider)
    if instrument:
        from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor

        CeleryMetricsInstrumentor().instrument(meter_provider=provider, settings=settings)
    return provider
