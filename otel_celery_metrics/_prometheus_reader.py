"""The Prometheus reader ``opentelemetry-instrument`` builds in Celery workers and beat.

Registered as the ``celery_metrics_prometheus`` metric exporter (``pyproject.toml``);
our SDK hook (``_port_check``) substitutes it for ``prometheus`` in
``OTEL_METRICS_EXPORTER`` while the SDK configures a ``celery worker`` or ``celery beat``
process, and restores the variable afterwards. It is opentelemetry-exporter-prometheus'
public ``PrometheusMetricReader`` (same registry, same exposition) with two differences
from that package's auto reader, which binds ``OTEL_EXPORTER_PROMETHEUS_PORT`` in its
constructor and raises on a busy port:

- the port is the node's own under ``celery multi`` (:func:`plan_endpoint`);
- a busy port is one error line and a background retry (:class:`MetricsServer`), not an
  exception out of the SDK's configuration.

This module is an SDK plugin: only the SDK imports it, and so it imports the exporter.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader

from otel_celery_metrics._metrics_endpoint import EndpointError, MetricsServer, plan_endpoint

_logger = logging.getLogger(__name__)

#: The entry-point name (group ``opentelemetry_metrics_exporter``).
ENTRY_POINT_NAME = "celery_metrics_prometheus"


class CeleryPrometheusReader(PrometheusMetricReader):
    """``PrometheusMetricReader`` serving on this worker's endpoint, now or when free."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server: MetricsServer | None = None
        try:
            from otel_celery_metrics._resource import worker_nodename

            endpoint = plan_endpoint(os.environ, worker_nodename())
        except EndpointError as exc:
            _logger.error(
                "otel-celery-metrics: cannot serve /metrics: %s; tasks keep running but "
                "this worker's metrics are not served", exc,
            )
            return
        self.server = MetricsServer(endpoint)
        self.server.start()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self.server is not None:
            self.server.stop()
        super().shutdown(timeout_millis=timeout_millis, **kwargs)
