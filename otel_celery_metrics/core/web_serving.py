"""Serving an endpoint with a web config file: reloads, TLS per connection, basic auth.

Shared by the standalone exporter (:mod:`otel_celery_metrics.exporter.http`) and the
in-process endpoint (:mod:`otel_celery_metrics.endpoint.guarded_web`); the format itself is
:mod:`otel_celery_metrics.core.web_config`.

- :class:`WebConfigFile` keeps the current
  :class:`~otel_celery_metrics.core.web_config.WebConfig` and re-reads the file when it,
  or a certificate/key/CA file it names, changes (checked per connection, as the
  exporter-toolkit re-reads per request) or on :meth:`WebConfigFile.reload` (SIGHUP). A
  file that turns bad closes the endpoint (every connection refused) until it is fixed:
  never a fallback to an open endpoint.
- :class:`GuardedServerMixin` for :mod:`socketserver` servers: the TLS handshake per
  connection, in the connection's thread, with the current context.
- :func:`guard_wsgi` wraps a WSGI app with basic auth and the configured headers.

Nothing runs at import.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core.web_config import (
    WebConfig,
    WebConfigError,
    load_web_config,
    referenced_files,
)

_logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0


_Signature = tuple[tuple[int, int, int, int] | None, ...]


class WebConfigFile:
    """The current :class:`WebConfig` of one file, re-read when it or its files change.

    :meth:`current` returns None while the file is bad: the endpoint then refuses every
    connection. Errors are logged once per distinct problem.
    """

    def __init__(self, path: str | os.PathLike[str],
                 loader: Callable[[str], WebConfig] = load_web_config) -> None:
        self.path = str(path)
        self._loader = loader
        self._lock = threading.Lock()
        self._signature: _Signature = self._stat()
        self._config: WebConfig | None = loader(self.path)  # raises WebConfigError
        self._last_error = ""

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> WebConfigFile:
        """Load ``path`` now; raise :class:`WebConfigError` when it is bad."""
        return cls(path)

    def _stat(self) -> _Signature:
        out: list[tuple[int, int, int, int] | None] = []
        for file in referenced_files(self.path):
            try:
                st = file.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
            except OSError:
                out.append(None)
        return tuple(out)

    def current(self) -> WebConfig | None:
        """The config to serve this connection with; None = refuse it (bad file)."""
        signature = self._stat()
        if signature != self._signature:
            self.reload(signature)
        return self._config

    def reload(self, signature: _Signature | None = None) -> bool:
        """Re-read the file now (SIGHUP); True when it is good."""
        with self._lock:
            self._signature = signature if signature is not None else self._stat()
            try:
                self._config = self._loader(self.path)
            except WebConfigError as exc:
                self._config = None
                if str(exc) != self._last_error:
                    self._last_error = str(exc)
                    _logger.error("%s; refusing every connection until it is fixed", exc)
                return False
            _logger.info("web config %s reloaded: %s", self.path, self._config.describe())
            self._last_error = ""
            return True


class GuardedServerMixin:
    """For a :mod:`socketserver` TCP server: TLS per connection from a :class:`WebConfigFile`.

    Put it before the server class (``class S(GuardedServerMixin, ThreadingHTTPServer)``).
    The handshake runs in the connection's own thread, so a slow or plain-HTTP client never
    stalls the accept loop. With ``web_config=None`` the server is plain and open.
    """

    def __init__(self, address: Any, handler: Any, *, web_config: WebConfigFile | None,
                 **kwargs: Any) -> None:
        self.web_config = web_config
        super().__init__(address, handler, **kwargs)  # type: ignore[call-arg]

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.web_config is None:
            super().finish_request(request, client_address)  # type: ignore[misc]
            return
        config = self.web_config.current()
        if config is None:
            return  # bad file: refuse (socketserver closes the connection)
        if config.tls is None:
            super().finish_request(request, client_address)  # type: ignore[misc]
            return
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = config.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            # Plain HTTP to the TLS port, a missing or untrusted client certificate.
            _logger.debug("TLS handshake with %s failed: %s", client_address, exc)
            return
        try:
            super().finish_request(tls, client_address)  # type: ignore[misc]
        finally:
            with contextlib.suppress(OSError):
                tls.shutdown(socket.SHUT_WR)
            tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver's default prints a traceback to stderr for a client that went away.
        _logger.debug("connection from %s failed", client_address, exc_info=True)


def unauthorized_headers() -> list[tuple[str, str]]:
    return [("WWW-Authenticate", 'Basic realm="metrics", charset="UTF-8"')]


def guard_wsgi(app: Callable[..., Any], web_config: WebConfigFile) -> Callable[..., Any]:
    """``app`` behind ``web_config``'s basic auth, with its response headers added."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        config = web_config.current()
        if config is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"web config invalid\n"]
        extra = list(config.headers)
        if not config.authorized(environ.get("HTTP_AUTHORIZATION")):
            start_response("401 Unauthorized",
                           [("Content-Type", "text/plain"), *unauthorized_headers(), *extra])
            return [b"Unauthorized\n"]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, *extra], exc_info)

        return app(environ, start)

    return guarded
