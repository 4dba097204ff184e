"""``/metrics`` (Prometheus text) and ``/health`` over HTTP, on a thread of its own.

A scrape only reads in-memory state: the collection never touches the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

_logger = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, list[str]]]


def make_server(
    host: str,
    port: int,
    registry: Any,
    collect_lock: threading.Lock,
    health: HealthCheck,
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
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
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            _logger.debug("http: " + format, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
