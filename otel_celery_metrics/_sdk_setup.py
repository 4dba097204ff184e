"""``setup_metrics()``: the short in-code setup for applications that configure
OpenTelemetry themselves instead of running ``opentelemetry-instrument``.

It builds a meter provider with one way out and instruments Celery with it, so it sits
above the instrumentor (it imports it; nothing imports it but the package). Every change
to SDK internals is :mod:`otel_celery_metrics.sdk_adapter`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor
from otel_celery_metrics.recording.settings import Settings

_logger = logging.getLogger(__name__)


def _prometheus_reader(host: str, port: int, scope_labels: bool, registry: Any) -> Any:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    from otel_celery_metrics.endpoint.server import Endpoint, MetricsServer

    reader = PrometheusMetricReader(scope_info_enabled=scope_labels, registry=registry)
    # Tasks must still run: a busy port is one error line and a retry in the background.
    MetricsServer(
        Endpoint(host, port, rule=f"prometheus_port={port}"),
        serve=lambda h, p: start_http_server(port=p, addr=h, registry=registry),
    ).start()
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
            from otel_celery_metrics.endpoint.guarded_web import guarded_prometheus_reader

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
        CeleryMetricsInstrumentor().instrument(meter_provider=provider, settings=settings)
    return provider
