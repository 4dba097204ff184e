"""The ``celery_metrics_prometheus`` metric exporter entry point (see
:mod:`otel_celery_metrics._prometheus_web`): the SDK's Prometheus reader, served behind
the web config file. Its own module because it subclasses opentelemetry-exporter-prometheus'
reader at import; only the SDK's configurator imports it, when the entry point is selected.
"""

from __future__ import annotations

import os

from opentelemetry.exporter.prometheus import PrometheusMetricReader

from otel_celery_metrics._prometheus_web import WEB_CONFIG_VARIABLE, start_endpoint


class GuardedPrometheusMetricReader(PrometheusMetricReader):
    """What ``OTEL_METRICS_EXPORTER=prometheus`` builds, on the same default registry and
    ``OTEL_EXPORTER_PROMETHEUS_HOST:PORT``, with TLS and basic auth from the web config.
    Reads the environment when constructed, as the SDK's own reader does."""

    def __init__(self) -> None:
        from prometheus_client import REGISTRY

        super().__init__()
        environ = os.environ
        start_endpoint(environ.get("OTEL_EXPORTER_PROMETHEUS_HOST") or "localhost",
                       environ.get("OTEL_EXPORTER_PROMETHEUS_PORT") or "9464", REGISTRY,
                       environ.get(WEB_CONFIG_VARIABLE, ""))
