"""``/metrics`` (Prometheus text) and ``/health`` over HTTP, on a thread of its own.

Without a registry (``--metrics-exporters=otlp``) ``/metrics`` answers 404 and
``/health`` stays. A scrape only reads in-memory state: the collection never touches the
broker. With a web config file (``--web.config.file``) every path is behind its TLS and
basic auth (see :mod:`otel_celery_metrics.core.web_serving`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from otel_celery_metrics.core.web_serving import (
    GuardedServerMixin,
    WebConfigFile,
    unauthorized_headers,
)

_logger = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, list[str]]]


class _Server(GuardedServerMixin, ThreadingHTTPServer):
    daemon_threads = True


def make_server(
    host: str,
    port: int,
    registry: Any,
    collect_lock: threading.Lock,
    health: HealthCheck,
    *,
    web_config: WebConfigFile | None = None,
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        timeout = 30.0  # a client that stops mid-request does not hold a thread forever

        def do_GET(self) -> None:
            self._extra: list[tuple[str, str]] = []
            if web_config is not None:
                config = web_config.current()
                if config is None:
                    self._reply(503, "text/plain; charset=utf-8", b"web config invalid\n")
                    return
                self._extra = list(config.headers)
                if not config.authorized(self.headers.get("Authorization")):
                    self._extra += unauthorized_headers()
                    self._reply(401, "text/plain; charset=utf-8", b"Unauthorized\n")
                    return
            path = self.path.split("?", 1)[0]
            if path == "/metrics" and registry is None:
                self._reply(404, "text/plain; charset=utf-8",
                            b"metrics are pushed over OTLP (--metrics-exporters=otlp)\n")
            elif path == "/metrics":
                with collect_lock:
                    body = generate_latest(registry)
                self._reply(200, CONTENT_TYPE_LATEST, body)
            elif path in ("/health", "/healthz"):
                ok, problems = health()
                text = "ok\n" if ok else "".join(f"{p}\n" for p in problems)
                self._reply(200 if ok else 503, "text/plain; charset=utf-8", text.encode())
            elif path == "/":
                page = b"otel-celery-exporter: /metrics, /health\n"
                self._reply(200, "text/plain; charset=utf-8", page)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in self._extra:
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            _logger.debug("http: " + format, *args)

    return _Server((host, port), Handler, web_config=web_config)
