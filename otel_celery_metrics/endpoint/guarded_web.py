"""The in-process Prometheus endpoint behind a web config file (TLS, basic auth).

With ``OTEL_METRICS_EXPORTER=prometheus``, opentelemetry-exporter-prometheus'
``_AutoPrometheusMetricReader`` serves the default registry with
``prometheus_client.start_http_server``: plain HTTP, no way to add TLS or auth. When
``OTEL_CELERY_METRICS_WEB_CONFIG_FILE`` is set, :func:`select_guarded_reader` (called by
the ``pre_sdk_init`` hook in :mod:`otel_celery_metrics.endpoint.sdk_hooks`, before the SDK
imports its exporters) checks the file and swaps ``prometheus`` in
``OTEL_METRICS_EXPORTER`` for our own entry point, :data:`EXPORTER_NAME`, whose reader
(``_prometheus_reader.CeleryPrometheusReader``, also what workers get without a web config:
a ``celery multi`` node's own port, a busy port retried) is the same Prometheus reader
serving the same registry on the same ``OTEL_EXPORTERPROMETHEUS_HOST:PORT``, through
:mod:`otel_celery_metrics.core.web_serving` (:func:`guarded_serve`). The SDK builds it in the
worker's main process at start-up, so the main process serves it (pool children fork
after and start no server).

A bad file is one error line and ``prometheus`` is dropped from ``OTEL_METRICS_EXPORTER``:
the endpoint stays closed (never open without the TLS or auth asked for) and the worker,
its tasks and every other exporter and instrumentation run as usual. The file is re-read
when it or its certificate files change; SIGHUP is Celery's (it restarts the worker).

:func:`guarded_prometheus_reader` is the same reader for ``setup_metrics()``. Nothing runs
at import.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, MutableMapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from otel_celery_metrics.core.web_config import WebConfigError
from otel_celery_metrics.core.web_serving import GuardedServerMixin, WebConfigFile, guard_wsgi
from otel_celery_metrics.endpoint.exporter_choice import (
    EXPORTER_VARIABLE,
    PROMETHEUS,
    READER_ENTRY_POINT,
    Replace,
    busy_port_message,
    reader_registered,
    write_exporters,
)
from otel_celery_metrics.recording.settings import variable_name

_logger = logging.getLogger(__name__)

#: Our ``opentelemetry_metrics_exporter`` entry point (pyproject.toml).
EXPORTER_NAME = READER_ENTRY_POINT
WEB_CONFIG_VARIABLE = variable_name("web_config_file")


def closed_message(problem: str) -> str:
    return (f"otel-celery-metrics: {WEB_CONFIG_VARIABLE}: {problem}; this worker's /metrics "
            "is not served (tasks keep running)")


def select_guarded_reader(
    environ: MutableMapping[str, str], *,
    replace: Replace = write_exporters,
    registered: Callable[[], bool] = reader_registered,
) -> str | None:
    """Before the SDK configures: if the web config variable is set and ``prometheus`` is
    selected, check the file and swap ``prometheus`` for :data:`EXPORTER_NAME` (or, for a
    bad file or when ``registered()`` says the SDK cannot find our reader, drop it and log
    one error line, returned). ``OTEL_METRICS_EXPORTER`` changes through ``replace``.
    Never raises."""
    try:
        path = environ.get(WEB_CONFIG_VARIABLE, "").strip()
        names = [n.strip() for n in environ.get(EXPORTER_VARIABLE, "").split(",") if n.strip()]
        # EXPORTER_NAME: _port_check selected our reader already (a worker or beat). The
        # reader checks the file itself and says so once the worker's logging is set up: a
        # celery multi node's stderr is /dev/null until then, so a line here would be lost.
        if not path or PROMETHEUS not in names or EXPORTER_NAME in names:
            return None
        rest = [n for n in names if n not in (PROMETHEUS, EXPORTER_NAME)]
        try:
            WebConfigFile.open(path)
        except WebConfigError as exc:
            message = closed_message(str(exc))
        else:
            if registered():
                replace(environ, ",".join(
                    EXPORTER_NAME if n == PROMETHEUS else n for n in names))
                return None
            # The SDK's own reader cannot apply the file, and a name it cannot find would
            # abort its whole setup: closed, never open.
            message = closed_message(
                f"the {EXPORTER_NAME} metric reader is not registered (reinstall "
                "otel-celery-metrics: its entry points are missing)")
        _logger.error("%s", message)
        replace(environ, ",".join(rest) or "none")
        return message
    except Exception as exc:  # noqa: BLE001 - a worker must start whatever happens here
        _logger.error("otel-celery-metrics: could not apply %s: %s; /metrics is not served",
                      WEB_CONFIG_VARIABLE, exc)
        rest = [n.strip() for n in str(environ.get(EXPORTER_VARIABLE, "")).split(",")
                if n.strip() and n.strip() not in (PROMETHEUS, EXPORTER_NAME)]
        replace(environ, ",".join(rest) or "none")  # closed, never open
        return None


class _QuietHandler(WSGIRequestHandler):
    timeout = 30.0  # a client that stops mid-request does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("http: " + format, *args)


class _GuardedWSGIServer(ThreadingMixIn, GuardedServerMixin, WSGIServer):
    daemon_threads = True


def serve_guarded(host: str, port: int, registry: Any, web_config: WebConfigFile) -> Any:
    """prometheus_client's WSGI app for ``registry`` behind ``web_config``, on a daemon
    thread. Raises OSError when the address cannot be bound."""
    import threading

    from prometheus_client import make_wsgi_app

    # As prometheus_client does: the first address family the host resolves to.
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                flags=socket.AI_PASSIVE)[0][0]
    server_class = type("GuardedServer", (_GuardedWSGIServer,), {"address_family": family})
    server = server_class((host, port), _QuietHandler, web_config=web_config)
    server.set_app(guard_wsgi(make_wsgi_app(registry), web_config))
    threading.Thread(target=server.serve_forever, name="otel-celery-metrics-http",
                     daemon=True).start()
    return server


def serving_message(host: str, port: int | str, web_config: WebConfigFile) -> str:
    """The start-up line of an endpoint behind a web config: where, and what is enforced
    (never a user name, a hash or key material)."""
    config = web_config.current()
    return (f"otel-celery-metrics: serving {config.scheme if config else '?'}://{host}:{port}"
            f"/metrics; web config {web_config.path}: "
            f"{config.describe() if config else 'invalid'}")


def guarded_serve(path: str) -> tuple[Callable[[str, int], object], WebConfigFile]:
    """For :class:`~otel_celery_metrics.endpoint.server.MetricsServer`: serve the default
    registry behind the web config at ``path`` (and the loaded file, for
    :func:`serving_message`). Raises :class:`WebConfigError` for a bad file (the caller
    logs :func:`closed_message`; the endpoint stays closed)."""
    from prometheus_client import REGISTRY

    web_config = WebConfigFile.open(path)
    return lambda host, port: serve_guarded(host, port, REGISTRY, web_config), web_config


def guarded_prometheus_reader(host: str, port: int, scope_labels: bool, registry: Any,
                              web_config_path: str) -> Any:
    """A PrometheusMetricReader whose ``registry`` is served behind ``web_config_path``;
    on a bad file or a busy port: one error line, and the reader without an endpoint."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    reader = PrometheusMetricReader(scope_info_enabled=scope_labels, registry=registry)
    start_endpoint(host, port, registry, web_config_path)
    return reader


def start_endpoint(host: str, port: int | str, registry: Any, path: str) -> None:
    """Serve ``registry`` behind the web config at ``path``; never raises (one error line
    on a bad file or a busy port, and no endpoint)."""

    try:
        web_config = WebConfigFile.open(path)
        serve_guarded(host, int(port), registry, web_config)
    except WebConfigError as exc:
        _logger.error("%s", closed_message(str(exc)))
        return
    except (OSError, ValueError) as exc:
        problem = exc if isinstance(exc, OSError) else "not a port number"
        _logger.error("%s", busy_port_message(host, str(port), problem))
        return
    # WARNING, as in a worker (see MetricsServer's serving_message): the one line that
    # confirms TLS and authentication are on must not hide below a default log level.
    _logger.warning("%s", serving_message(host, port, web_config))
