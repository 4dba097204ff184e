"""A busy Prometheus port: one clear error line, and the worker still instrumented.

What happens without this module: under ``opentelemetry-instrument`` with
``OTEL_METRICS_EXPORTER=prometheus``, the SDK configurator constructs
opentelemetry-exporter-prometheus' ``_AutoPrometheusMetricReader``, which calls
``prometheus_client.start_http_server`` in its constructor. On a busy port that raises
``OSError: [Errno 98] Address already in use`` (no port in the message) out of the
configurator; ``opentelemetry-instrument`` logs two ~25-line tracebacks and abandons the
whole auto-instrumentation: no meter provider, and no instrumentor is loaded at all
(neither ours nor any tracing one). Tasks still run, unobserved.

:func:`check_prometheus_port` runs before the SDK builds its readers. When the configured
``OTEL_EXPORTER_PROMETHEUS_HOST:PORT`` cannot be bound it logs one error line naming the
address and the variable, and takes ``prometheus`` out of ``OTEL_METRICS_EXPORTER`` so the
SDK configures without it: the worker starts, other exporters and every instrumentation
still load, only this worker's ``/metrics`` is missing.

It must run before ``_initialize_components`` imports the exporters, i.e. before our
instrumentor exists (``_instrument`` is never reached when the configurator fails).
:func:`pre_sdk_init` is shaped for the SDK's only hook at that point, the
``_opentelemetry_opamp`` / ``pre_sdk_init_function`` entry point; it also calls any other
distribution's function registered under that name, since the SDK calls only the first.

Nothing runs at import; the environment is passed in or read only when called.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from typing import Any

_logger = logging.getLogger("otel_celery_metrics")

EXPORTER_VARIABLE = "OTEL_METRICS_EXPORTER"
HOST_VARIABLE = "OTEL_EXPORTER_PROMETHEUS_HOST"
PORT_VARIABLE = "OTEL_EXPORTER_PROMETHEUS_PORT"
#: The defaults opentelemetry-exporter-prometheus applies (the OpenTelemetry spec's).
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 9464
_PROMETHEUS = "prometheus"
_HOOK_GROUP = "_opentelemetry_opamp"
_HOOK_NAME = "pre_sdk_init_function"


def prometheus_address(environ: MutableMapping[str, str]) -> tuple[str, str] | None:
    """(host, port text) the Prometheus exporter will bind, or None if it is not selected."""
    names = [n.strip() for n in environ.get(EXPORTER_VARIABLE, "").split(",")]
    if _PROMETHEUS not in names:
        return None
    host = environ.get(HOST_VARIABLE) or DEFAULT_HOST
    port = environ.get(PORT_VARIABLE) or str(DEFAULT_PORT)
    return host, port


def bind_problem(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound the way prometheus_client binds it, or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        return exc
    family, kind, proto, _name, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as sock:
            # As http.server does (allow_reuse_address): a port in TIME_WAIT is usable.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:
        return exc
    return None


def busy_port_message(host: str, port: str, problem: OSError | str) -> str:
    """The one error line: names the address, the variable and what to do."""
    reason = (problem.strerror or str(problem)) if isinstance(problem, OSError) else problem
    return (
        f"otel-celery-metrics: cannot serve /metrics on {host}:{port} ({reason}; "
        f"{PORT_VARIABLE}={port}); tasks keep running and instrumentation stays on, but "
        f"this worker's metrics are not served. Choose a free port."
    )


def check_prometheus_port(environ: MutableMapping[str, str]) -> str | None:
    """If the Prometheus exporter is selected and its address cannot be bound: log one
    error line, drop ``prometheus`` from ``OTEL_METRICS_EXPORTER`` in ``environ``, and
    return the line. Otherwise change nothing and return None. Never raises."""
    try:
        address = prometheus_address(environ)
        if address is None:
            return None
        host, port_text = address
        try:
            port = int(port_text)
        except ValueError:
            problem: OSError | str | None = "not a port number"
        else:
            problem = bind_problem(host, port)
        if problem is None:
            return None
        message = busy_port_message(host, port_text, problem)
        _logger.error("%s", message)
        rest = [
            n.strip() for n in environ.get(EXPORTER_VARIABLE, "").split(",")
            if n.strip() and n.strip() != _PROMETHEUS
        ]
        environ[EXPORTER_VARIABLE] = ",".join(rest) or "none"
        return message
    except Exception as exc:  # noqa: BLE001 - a check must never stop a worker starting
        _logger.warning("otel-celery-metrics: could not check the Prometheus port: %s", exc)
        return None


def pre_sdk_init(resource: Any) -> None:
    """``_opentelemetry_opamp`` ``pre_sdk_init_function`` entry point: runs in
    ``opentelemetry-instrument``'s configurator before exporters are created."""
    check_prometheus_port(os.environ)
    from otel_celery_metrics._prometheus_web import select_guarded_reader

    select_guarded_reader(os.environ)  # OTEL_CELERY_METRICS_WEB_CONFIG_FILE: TLS, basic auth
    _chain_other_hooks(resource)


def _chain_other_hooks(resource: Any) -> None:
    """The SDK calls only the first ``pre_sdk_init_function``; call the others (an OpAMP
    client's) so registering ours never shadows theirs."""
    try:
        from importlib.metadata import entry_points

        for entry_point in entry_points(group=_HOOK_GROUP, name=_HOOK_NAME):
            if entry_point.value.startswith(__name__ + ":"):
                continue
            entry_point.load()(resource)
    except Exception as exc:  # noqa: BLE001
        _logger.warning("otel-celery-metrics: a %s hook failed: %s", _HOOK_NAME, exc)
