"""Where the exporter's metrics go: ``/metrics`` for a scrape, OTLP pushes, or both.

Owns the metric readers of the exporter's two meter providers (:mod:`.instruments`): a
Prometheus reader on the registry ``/metrics`` serves, and a periodic OTLP reader with the
exporter class of the configured protocol (``http/protobuf`` or ``grpc``) and temporality.
The OTLP exporter classes read the standard endpoint, headers, timeout, compression and
certificate variables (``OTEL_EXPORTER_OTLP_[METRICS_]*``) themselves, as they do in a
worker. Also owns the resource both outputs carry.

The temporality rules are the in-process mode's (``docs/collector.md``): cumulative by
default, which the Collector's ``prometheus`` exporter and Prometheus' OTLP receiver store
as they are; ``delta`` and ``lowmemory`` as the OpenTelemetry specification defines them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource

from otel_celery_metrics.exporter.config import ExporterConfig

PROMETHEUS = "prometheus"
OTLP = "otlp"
METRICS_EXPORTERS = (PROMETHEUS, OTLP)
PROTOCOLS = ("http/protobuf", "grpc")
TEMPORALITIES = ("cumulative", "delta", "lowmemory")
#: protocol -> (module, extra that installs it)
_EXPORTER_MODULES = {
    "http/protobuf": ("opentelemetry.exporter.otlp.proto.http.metric_exporter", "otlp"),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.metric_exporter", "otlp-grpc"),
}
SERVICE_NAME = "otel-celery-exporter"


class OutputUnavailable(Exception):
    """The OTLP exporter for the configured protocol is not installed."""

    def __init__(self, protocol: str, extra: str) -> None:
        super().__init__(
            f"OTLP over {protocol} needs its exporter: pip install 'otel-celery-metrics[{extra}]'"
        )


def otlp_exporter_class(protocol: str) -> type[MetricExporter]:
    """The SDK's OTLP metric exporter for ``protocol``; :class:`OutputUnavailable` when
    the extra that installs it is missing (the CLI checks this before starting)."""
    import importlib

    module_name, extra = _EXPORTER_MODULES[protocol]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise OutputUnavailable(protocol, extra) from None
    exporter: type[MetricExporter] = module.OTLPMetricExporter
    return exporter


def preferred_temporality(preference: str) -> dict[type, AggregationTemporality]:
    """The specification's table for OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE."""
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
    )

    cumulative, delta = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA
    table: dict[type, AggregationTemporality] = {
        kind: cumulative for kind in (Counter, UpDownCounter, Histogram, ObservableCounter,
                                      ObservableUpDownCounter, ObservableGauge)
    }
    if preference == "delta":
        table.update({Counter: delta, Histogram: delta, ObservableCounter: delta})
    elif preference == "lowmemory":
        table.update({Counter: delta, Histogram: delta})
    return table


def exporter_resource() -> Resource:
    """``service.name`` = otel-celery-exporter unless ``OTEL_SERVICE_NAME`` or
    ``OTEL_RESOURCE_ATTRIBUTES`` name one (read by the SDK's resource detection, as in a
    worker); on ``target_info`` of ``/metrics`` and on every OTLP export."""
    detected = Resource.create()
    if str(detected.attributes.get("service.name", "")).startswith("unknown_service"):
        detected = detected.merge(Resource({"service.name": SERVICE_NAME}))
    return detected


class Outputs:
    """The readers for each meter provider, as ``--metrics-exporters`` asks.

    ``otlp_exporter`` makes one OTLP exporter per reader (a reader's shutdown shuts its
    exporter down, and the observable provider is rebuilt); tests inject their own."""

    def __init__(
        self,
        config: ExporterConfig,
        registry: Any,
        *,
        otlp_exporter: Callable[[], MetricExporter] | None = None,
        resource: Resource | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self.prometheus = PROMETHEUS in config.metrics_exporters
        self.otlp = OTLP in config.metrics_exporters
        self.resource = resource if resource is not None else exporter_resource()
        if otlp_exporter is None and self.otlp:
            cls = otlp_exporter_class(config.otlp_protocol)
            temporality = preferred_temporality(config.otlp_temporality)

            def otlp_exporter() -> MetricExporter:
                return cls(preferred_temporality=temporality)

        self._otlp_exporter = otlp_exporter

    @property
    def rebuild_safe(self) -> bool:
        """Whether the observable provider may be replaced (:mod:`.instruments`): a new one
        starts its delta from zero, so under ``delta`` every total would be sent again."""
        return not (self.otlp and self._config.otlp_temporality == "delta")

    def readers(self, *, target_info: bool) -> list[MetricReader]:
        readers: list[MetricReader] = []
        if self.prometheus:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader

            readers.append(PrometheusMetricReader(
                disable_target_info=not target_info, scope_info_enabled=False,
                registry=self._registry,
            ))
        if self.otlp and self._otlp_exporter is not None:
            readers.append(PeriodicExportingMetricReader(
                self._otlp_exporter(),
                export_interval_millis=self._config.otlp_export_interval * 1000,
            ))
        return readers

    def describe(self) -> str:
        parts = []
        if self.prometheus:
            parts.append("/metrics")
        if self.otlp:
            parts.append(f"OTLP {self._config.otlp_protocol} every "
                         f"{self._config.otlp_export_interval:g} s "
                         f"({self._config.otlp_temporality})")
        return " and ".join(parts)
