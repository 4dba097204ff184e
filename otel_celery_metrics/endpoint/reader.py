"""The Prometheus reader ``opentelemetry-instrument`` builds in Celery workers and beat.

Registered as the ``celery_metrics_prometheus`` metric exporter (``pyproject.toml``);
our SDK hook (``endpoint.sdk_hooks``) substitutes it for ``prometheus`` in
``OTEL_METRICS_EXPORTER`` while the SDK configures a ``celery worker`` or ``celery beat``
process, and restores the variable afterwards. It is opentelemetry-exporter-prometheus'
public ``PrometheusMetricReader`` (same registry, same exposition) with three differences
from that package's auto reader, which binds ``OTEL_EXPORTER_PROMETHEUS_PORT`` in its
constructor and raises on a busy port:

- the port is the node's own under ``celery multi`` (:func:`plan_endpoint`);
- a busy port is one error line and a background retry (:class:`MetricsServer`), not an
  exception out of the SDK's configuration;
- with ``OTEL_CELERY_METRICS_WEB_CONFIG_FILE``, TLS and basic auth
  (:mod:`otel_celery_metrics.endpoint.guarded_web`). In a ``celery worker`` those lines wait for
  Celery's ``celeryd_after_setup`` signal, i.e. for the worker's own logging: a detached
  node (every ``celery multi`` node) has ``/dev/null`` as stderr until then.

This module is an SDK plugin: only the SDK imports it, and so it imports the exporter.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader

from otel_celery_metrics.core.web_config import WebConfigError
from otel_celery_metrics.endpoint.guarded_web import (
    WEB_CONFIG_VARIABLE,
    closed_message,
    guarded_serve,
    serving_message,
)
from otel_celery_metrics.endpoint.server import EndpointError, MetricsServer, plan_endpoint
from otel_celery_metrics.worker.process_role import Role, process_role

_logger = logging.getLogger(__name__)

class CeleryPrometheusReader(PrometheusMetricReader):
    """``PrometheusMetricReader`` serving on this worker's endpoint, now or when free."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server: MetricsServer | None = None
        in_worker = process_role() is Role.WORKER
        try:
            from otel_celery_metrics.worker.resource import worker_nodename

            endpoint = plan_endpoint(os.environ, worker_nodename())
        except EndpointError as exc:
            message = (
                f"otel-celery-metrics: cannot serve /metrics: {exc}; tasks keep running but "
                "this worker's metrics are not served"
            )
            _after_logging_setup(in_worker, lambda: _logger.error("%s", message))
            return
        web_config = os.environ.get(WEB_CONFIG_VARIABLE, "").strip()
        if web_config:
            try:
                serve, loaded = guarded_serve(web_config)
            except WebConfigError as exc:
                # One error line once the worker can log it; the endpoint stays closed
                # (never open without the TLS or authentication the file asks for).
                closed = closed_message(str(exc))
                _after_logging_setup(in_worker, lambda: _logger.error("%s", closed))
                return
            self.server = MetricsServer(
                endpoint, serve, hold_messages=in_worker,
                serving_message=lambda host, port: serving_message(host, port, loaded),
            )
        else:
            self.server = MetricsServer(endpoint, hold_messages=in_worker)
        _after_logging_setup(in_worker, self.server.release_messages)
        self.server.start()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self.server is not None:
            self.server.stop()
        super().shutdown(timeout_millis=timeout_millis, **kwargs)


def _after_logging_setup(in_worker: bool, callback: Callable[[], None]) -> None:
    """Call ``callback`` once a worker's logging is set up (at once elsewhere)."""
    try:
        from celery import signals
    except ImportError:  # a "celery worker" command line without Celery: nothing to wait for
        in_worker = False
    if not in_worker:
        callback()
        return

    def when_set_up(**_: Any) -> None:
        signals.celeryd_after_setup.disconnect(when_set_up)
        callback()

    signals.celeryd_after_setup.connect(when_set_up, weak=False)
