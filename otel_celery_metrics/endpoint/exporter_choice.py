"""``OTEL_METRICS_EXPORTER``: reading it, changing it for good or for the SDK's setup only,
and the busy-port check that takes ``prometheus`` out of it in programs that are no worker.

Shared by the SDK hooks (:mod:`~otel_celery_metrics.endpoint.sdk_hooks`) and the guarded
reader selection (:mod:`~otel_celery_metrics.endpoint.guarded_web`), which both decide
what goes into that variable before the SDK reads it. Nothing runs at import.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, MutableMapping

from otel_celery_metrics.endpoint.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    HOST_VARIABLE,
    PORT_VARIABLE,
)

_logger = logging.getLogger(__name__)

#: How a check changes ``OTEL_METRICS_EXPORTER``: for good, or for the SDK's setup only.
Replace = Callable[[MutableMapping[str, str], str], None]

EXPORTER_VARIABLE = "OTEL_METRICS_EXPORTER"
PROMETHEUS = "prometheus"
#: Our reader's name in the ``opentelemetry_metrics_exporter`` entry-point group
#: (otel_celery_metrics.endpoint.reader, which imports the exporter: not imported here).
READER_ENTRY_POINT = "celery_metrics_prometheus"


def prometheus_address(environ: MutableMapping[str, str]) -> tuple[str, str] | None:
    """(host, port text) the Prometheus exporter will bind, or None if it is not selected."""
    names = [n.strip() for n in environ.get(EXPORTER_VARIABLE, "").split(",")]
    if PROMETHEUS not in names:
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


def write_exporters(environ: MutableMapping[str, str], value: str) -> None:
    """Set ``OTEL_METRICS_EXPORTER`` for good (what :class:`ExporterSwap` undoes)."""
    environ[EXPORTER_VARIABLE] = value


def check_prometheus_port(
    environ: MutableMapping[str, str], replace: Replace = write_exporters
) -> str | None:
    """If the Prometheus exporter is selected and its address cannot be bound: log one
    error line, drop ``prometheus`` from ``OTEL_METRICS_EXPORTER`` in ``environ`` (through
    ``replace``), and return the line. Otherwise change nothing and return None. Never
    raises."""
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
            if n.strip() and n.strip() != PROMETHEUS
        ]
        replace(environ, ",".join(rest) or "none")
        return message
    except Exception as exc:  # noqa: BLE001 - a check must never stop a worker starting
        _logger.warning("otel-celery-metrics: could not check the Prometheus port: %s", exc)
        return None


class ExporterSwap:
    """Changes ``OTEL_METRICS_EXPORTER`` for the SDK's configuration only, then puts it back.

    The variable is read by the SDK between our pre- and post-init hooks; every process
    this one starts afterwards (``celery multi``'s nodes, the worker a ``--detach``
    process re-executes as) must inherit the user's value, not ours.
    """

    def __init__(self) -> None:
        self._original: dict[str, str | None] = {}

    def replace(self, environ: MutableMapping[str, str], value: str) -> None:
        self._original.setdefault(EXPORTER_VARIABLE, environ.get(EXPORTER_VARIABLE))
        environ[EXPORTER_VARIABLE] = value

    def restore(self, environ: MutableMapping[str, str]) -> None:
        if EXPORTER_VARIABLE not in self._original:
            return
        original = self._original.pop(EXPORTER_VARIABLE)
        if original is None:
            environ.pop(EXPORTER_VARIABLE, None)
        else:
            environ[EXPORTER_VARIABLE] = original



def reader_registered() -> bool:
    """Whether the SDK can find our reader: an exporter name it cannot find aborts its
    whole configuration (say, metadata older than the code in a source checkout)."""
    from importlib.metadata import entry_points

    group = entry_points(group="opentelemetry_metrics_exporter", name=READER_ENTRY_POINT)
    return any(True for _ in group)
