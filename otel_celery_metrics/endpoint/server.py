"""Where a worker serves ``/metrics``, and serving it even when the port is busy at start.

Two jobs:

- :func:`plan_endpoint`: the address of this process' endpoint. It is
  ``OTEL_EXPORTER_PROMETHEUS_HOST:OTEL_EXPORTER_PROMETHEUS_PORT``, except for the nodes of
  ``celery multi``, which all inherit the same variables: node ``<name><N>@host`` serves
  on ``OTEL_EXPORTER_PROMETHEUS_PORT + N - 1`` (``celery1`` on the port itself, ``celery2``
  on the next, ...). The number comes from the node's own name, so the same node gets the
  same port on every start and restart, and a static Prometheus config stays right.
  A node is known to be a ``celery multi`` node by :data:`MULTI_MARKER`, which our SDK
  hook sets in the launcher's environment (see ``endpoint.sdk_hooks``) for its nodes to inherit.
- :class:`MetricsServer`: binds the endpoint now if it can; otherwise logs one error line
  naming the address (and the node) and keeps trying in a daemon thread with backoff,
  logging one line when it finally serves. It never raises and never blocks its caller:
  a busy port must not stop a worker, and must not leave it unobservable for good.

Nothing runs at import; prometheus_client is imported only when serving.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_logger = logging.getLogger(__name__)

HOST_VARIABLE = "OTEL_EXPORTER_PROMETHEUS_HOST"
PORT_VARIABLE = "OTEL_EXPORTER_PROMETHEUS_PORT"
#: The defaults opentelemetry-exporter-prometheus applies (the OpenTelemetry spec's).
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 9464
#: Set (to "1") by our SDK hook in a ``celery multi`` launcher; its nodes inherit it.
MULTI_MARKER = "_OTEL_CELERY_METRICS_MULTI_NODE"
#: Retries of a busy port: after 1 s, then doubling up to every 15 s, until it binds.
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 15.0

_TRAILING_NUMBER = re.compile(r"(\d+)$")
_MAX_PORT = 65535


@dataclass(frozen=True)
class Endpoint:
    """Where to serve ``/metrics``, and why there (for messages)."""

    host: str
    port: int
    #: The ``celery multi`` node this endpoint belongs to, if any.
    node: str | None = None
    #: How the port was chosen, e.g. ``OTEL_EXPORTER_PROMETHEUS_PORT=9808 + 2 - 1``.
    rule: str = ""

    def where(self) -> str:
        """``host:port``, with the node for a ``celery multi`` node."""
        address = f"{self.host}:{self.port}"
        return f"{address} (celery multi node {self.node})" if self.node else address


class EndpointError(ValueError):
    """No usable endpoint; the message names the variable, the value and the node."""


def node_number(nodename: str) -> int | None:
    """The number at the end of a node's name (``celery3@host`` -> 3), or None."""
    match = _TRAILING_NUMBER.search(nodename.partition("@")[0])
    return int(match.group(1)) if match else None


def plan_endpoint(environ: Mapping[str, str], nodename: str | None) -> Endpoint:
    """The endpoint of this process (see the module docstring).

    ``nodename`` is the worker's node name when it is a ``celery worker``. Raises
    :class:`EndpointError` when the variables do not give a port.
    """
    host = environ.get(HOST_VARIABLE) or DEFAULT_HOST
    text = environ.get(PORT_VARIABLE) or str(DEFAULT_PORT)
    try:
        base = int(text)
    except ValueError:
        msg = f"{PORT_VARIABLE}={text!r} is not a port number"
        raise EndpointError(msg) from None
    in_multi = bool(environ.get(MULTI_MARKER)) and nodename is not None
    number = node_number(nodename) if in_multi and nodename else None
    if not in_multi:
        port, node, rule = base, None, f"{PORT_VARIABLE}={base}"
    elif number is None or number < 1:
        # A named node (``celery multi start image video``): the base port; a second
        # such node finds it busy and says so, naming itself.
        port, node = base, nodename
        rule = f"{PORT_VARIABLE}={base}; the node name ends in no number"
    else:
        port, node = base + number - 1, nodename
        rule = f"{PORT_VARIABLE}={base} + {number} - 1 for node number {number}"
    if not 0 < port <= _MAX_PORT:
        where = f" for celery multi node {node}" if node else ""
        msg = f"port {port}{where} is out of range ({rule})"
        raise EndpointError(msg)
    return Endpoint(host, port, node, rule)


def _start_http_server(host: str, port: int) -> object:
    from prometheus_client import start_http_server

    return start_http_server(port=port, addr=host)


class MetricsServer:
    """Serves ``/metrics`` on an endpoint, now or as soon as its port is free.

    ``serve(host, port)`` binds and starts serving, raising :class:`OSError` when it
    cannot (default: ``prometheus_client.start_http_server`` on the global registry, as
    opentelemetry-exporter-prometheus does). ``wait(seconds)`` waits between attempts and
    returns True to give up (default: until :meth:`stop`). With ``hold_messages`` its log
    lines wait for :meth:`release_messages`: a worker's logging is set up only later, and
    a detached ``celery multi`` node's stderr is ``/dev/null`` until then.
    ``serving_message(host, port)``, when given, is logged once the endpoint serves (at
    WARNING, like the line after a busy port: Celery's default level hides INFO, and this
    is the line that tells an operator what the endpoint enforces).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        serve: Callable[[str, int], object] = _start_http_server,
        *,
        wait: Callable[[float], bool] | None = None,
        first_retry: float = FIRST_RETRY_SECONDS,
        max_retry: float = MAX_RETRY_SECONDS,
        hold_messages: bool = False,
        serving_message: Callable[[str, int], str] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._serving_message = serving_message
        self._serve = serve
        self._stopped = threading.Event()
        self._wait = wait or self._stopped.wait
        self._first_retry = first_retry
        self._max_retry = max_retry
        self.serving = False
        self.thread: threading.Thread | None = None
        self._messages_lock = threading.Lock()
        self._held: list[tuple[int, str]] | None = [] if hold_messages else None

    def start(self) -> bool:
        """Serve now if the port is free (True); else retry in the background (False)."""
        try:
            self._serve(self.endpoint.host, self.endpoint.port)
        except OSError as exc:
            self._log(logging.ERROR, self._busy_message(exc))  # one line: no bug, no trace
        except Exception as exc:  # noqa: BLE001 - metrics must never stop a worker
            self._log(
                logging.ERROR,
                f"otel-celery-metrics: cannot serve /metrics on {self.endpoint.where()}: "
                f"{type(exc).__name__}: {exc}",
            )
            return False
        else:
            self.serving = True
            self._log_serving()
            return True
        self.thread = threading.Thread(
            target=self._keep_trying, name="otel-celery-metrics-bind", daemon=True
        )
        self.thread.start()
        return False

    def stop(self) -> None:
        """Stop retrying (a server already serving keeps serving until the process ends)."""
        self._stopped.set()

    def release_messages(self) -> None:
        """Log the lines held so far, and log later ones as they come."""
        with self._messages_lock:
            held, self._held = self._held or [], None
        for level, message in held:
            _logger.log(level, "%s", message)

    def _log(self, level: int, message: str) -> None:
        with self._messages_lock:
            if self._held is not None:
                self._held.append((level, message))
                return
        _logger.log(level, "%s", message)

    def _log_serving(self) -> None:
        if self._serving_message is None:
            return
        try:
            message = self._serving_message(self.endpoint.host, self.endpoint.port)
        except Exception as exc:  # noqa: BLE001 - serving goes on; only the line is lost
            message = (f"otel-celery-metrics: serving /metrics on {self.endpoint.where()} "
                       f"(cannot describe it: {type(exc).__name__}: {exc})")
        self._log(logging.WARNING, message)

    def _busy_message(self, exc: OSError) -> str:
        reason = exc.strerror or str(exc)
        return (
            f"otel-celery-metrics: cannot serve /metrics on {self.endpoint.where()} "
            f"({reason}; {self.endpoint.rule}); tasks keep running and are counted, and "
            f"the port is tried again in the background (every {self._max_retry:g} s at "
            f"most) until it is free. Choose a free port."
        )

    def _keep_trying(self) -> None:
        delay = self._first_retry
        try:
            while not self._wait(delay):
                try:
                    self._serve(self.endpoint.host, self.endpoint.port)
                except OSError:
                    delay = min(delay * 2, self._max_retry)
                    continue
                self.serving = True
                self._log(
                    logging.WARNING,
                    f"otel-celery-metrics: now serving /metrics on {self.endpoint.where()} "
                    "(the port was busy at start)",
                )
                self._log_serving()
                return
        except Exception as exc:  # noqa: BLE001 - a daemon thread must not die noisily
            self._log(
                logging.ERROR,
                f"otel-celery-metrics: gave up serving /metrics on {self.endpoint.where()}: "
                f"{type(exc).__name__}: {exc}",
            )
