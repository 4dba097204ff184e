"""The broker connection and receive loop: connect, read events, reconnect forever.

Two receivers share one contract (:class:`ReceiverStatus`, ``run(stop)`` that returns
only when ``stop`` is set):

- :class:`RedisPubSubReceiver` -- for ``redis://``: subscribes to the event topics
  itself and splits the work in two threads. One only reads the socket, in large
  chunks, so Redis never holds a backlog for us (a stock Redis drops a subscriber whose
  output buffer passes 32 MB, losing every event in it); the other parses, decodes and
  hands events to the handlers. A burst is buffered on our side, bounded by
  ``max_backlog_bytes``.
- :class:`KombuReceiver` -- any other transport (``rediss://``, sentinel, ...):
  Celery's own event receiver over kombu; the broker queues events for us.

RabbitMQ has its own receiver on the same base, in :mod:`.amqp_receiver`.
:class:`NoEventReceiver` stands in on transports that carry no events (probe-only mode,
:mod:`.capabilities`): it reads nothing, and its status is the queue depth probe's.

A lost broker never ends the loop: it reconnects with capped exponential backoff and
logs the masked URL (never a password).

Up means answered: a receiver reports itself connected only once the broker has replied
on the new connection (Redis: ``+PONG`` to a PING sent before subscribing, within
``probe_timeout``; kombu: its connect, which on Redis PINGs and on RabbitMQ is the AMQP
handshake), never on a TCP handshake alone, which a hung server's listen backlog still
completes. A connection that then hears nothing for ``broker_heartbeat`` seconds is
declared lost, though a PING (Redis) or heartbeats (RabbitMQ) keep a healthy idle one
talking: a hang is reported down within ``broker_heartbeat`` (plus, on the kombu
receiver, one ``probe_timeout`` for the PING in flight) and stays down, each new
connection failing its first round trip, for as long as it lasts.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from otel_celery_metrics.exporter._wire import (
    ProtocolError,
    PubSubParser,
    UndecodableEvent,
    decode_envelope,
)
from otel_celery_metrics.exporter.broker_tls import describe as describe_tls
from otel_celery_metrics.exporter.broker_tls import tls_failure
from otel_celery_metrics.exporter.config import ExporterConfig

_logger = logging.getLogger(__name__)

EventSink = Callable[[object], None]
DropSink = Callable[[str, str, int], None]
_READ_SIZE = 1 << 20
#: A PING goes out after this share of ``broker_heartbeat`` in silence.
PING_AFTER = 1 / 3
_RESET = b""  # queued on reconnect: the parser starts over on a new stream


class ReceiverStatus:
    """What health checks and self-metrics read; written only by the receiver."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.connected = False
        self.reconnects = 0
        self.last_error: str | None = None
        #: Monotonic time each loop last turned; health fails when one stops turning.
        self.turns: dict[str, float] = {}

    def turn(self, loop: str) -> None:
        self.turns[loop] = self._clock()

    def stuck_for(self) -> float:
        if not self.turns:
            return 0.0
        return self._clock() - min(self.turns.values())


class Backoff:
    """Capped exponential delays: initial, 2x, 4x ... up to ``maximum``."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._initial = initial
        self._maximum = maximum
        self.attempts = 0

    def next_delay(self) -> float:
        delay = min(self._maximum, self._initial * float(2 ** min(self.attempts, 30)))
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


class _BaseReceiver:
    def __init__(self, config: ExporterConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self.status = ReceiverStatus(clock)
        self._backoff = Backoff(config.reconnect_initial, config.reconnect_max)
        self._ever_connected = False
        #: The TLS failure last logged as an error: each new one once, not every retry.
        self._tls_reported = ""

    def _on_connected(self) -> None:
        if self._ever_connected:
            self.status.reconnects += 1
            _logger.info(
                "reconnected to the broker %s after %d failed attempt(s)",
                self._config.masked_broker_url, self._backoff.attempts,
            )
        else:
            _logger.info("connected to the broker %s", self._config.masked_broker_url)
        self._ever_connected = True
        self.status.connected = True
        self.status.last_error = None
        self._tls_reported = ""
        self._backoff.reset()

    def _on_lost(self, exc: BaseException, stop: threading.Event) -> None:
        was_connected = self.status.connected
        self.status.connected = False
        self.status.last_error = f"{type(exc).__name__}: {exc}"[:300]
        delay = self._backoff.next_delay()
        self._report_tls_failure(exc)
        _logger.warning(
            "%s the broker %s (%s); retrying in %.1fs",
            "lost" if was_connected else "cannot reach",
            self._config.masked_broker_url, self.status.last_error, delay,
        )
        stop.wait(delay)

    def _report_tls_failure(self, exc: BaseException) -> None:
        """A TLS failure is a setting to fix, not an outage to wait out: say so, once."""
        failure = tls_failure(exc)
        if failure is None:
            return
        detail = getattr(failure, "verify_message", "") or ""
        text = f"{failure.reason or failure}" + (f" ({detail})" if detail else "")
        if text == self._tls_reported:
            return
        self._tls_reported = text
        _logger.error(
            "TLS with the broker %s failed: %s. Settings: %s (--broker-tls-ca-file, "
            "--broker-tls-cert-file, --broker-tls-key-file, --broker-tls-verify); retrying",
            self._config.masked_broker_url, text, describe_tls(self._config),
        )


class RedisPubSubReceiver(_BaseReceiver):
    def __init__(
        self,
        config: ExporterConfig,
        handle: EventSink,
        drop: DropSink,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(config, clock)
        self._handle = handle
        self._drop = drop
        self._chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._in_bytes = 0
        self._out_bytes = 0
        self._resync = threading.Event()
        parts = urlsplit(config.broker_url)
        self._host = parts.hostname or "localhost"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        db = (parts.path or "/0").strip("/") or "0"
        # kombu publishes events to "/{db}.celeryev/<routing key>" (fanout_prefix and
        # fanout_patterns, both on by default), after its global_keyprefix: PUBLISH is one
        # of the commands kombu's PrefixedStrictRedis prefixes.
        self.pattern = f"{_glob_escape(config.redis_key_prefix)}/{db}.celeryev/*"

    # -- reading ---------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        processor = threading.Thread(
            target=self._process_loop, args=(stop,), name="otel-celery-exporter-decode",
            daemon=True,
        )
        processor.start()
        try:
            while not stop.is_set():
                try:
                    sock = self._connect()
                except OSError as exc:
                    self._on_lost(exc, stop)
                    continue
                try:
                    self._on_connected()  # the broker has answered the PING in _connect
                    self._read_loop(sock, stop)
                except (OSError, ProtocolError, ValueError) as exc:
                    if not stop.is_set():
                        self._on_lost(exc, stop)
                finally:
                    self.status.connected = False
                    sock.close()
                    self._chunks.put(_RESET)
        finally:
            processor.join(timeout=5)

    def _command(self, *args: str) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            raw = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        return b"".join(out)

    def _connect(self) -> socket.socket:
        timeout = self._config.probe_timeout
        sock = socket.create_connection((self._host, self._port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            if self._password is not None:
                auth = ("AUTH", self._username, self._password) if self._username else (
                    "AUTH", self._password)
                sock.sendall(self._command(*auth))
                reply = _read_line(sock)
                if not reply.startswith(b"+"):
                    msg = "authentication failed: " + reply[:100].decode("utf-8", "replace")
                    raise ConnectionRefusedError(msg)
            # Up means answered: a hung Redis (or a proxy in front of one) still completes
            # the TCP handshake from its listen backlog, but it sends no PONG.
            sock.sendall(self._command("PING"))
            reply = _read_line(sock)
            if not reply.startswith(b"+PONG"):
                msg = "unexpected reply to PING: " + reply[:100].decode("utf-8", "replace")
                raise ConnectionRefusedError(msg)
            sock.sendall(self._command("PSUBSCRIBE", self.pattern))
            sock.settimeout(self._config.broker_heartbeat * PING_AFTER)
        except BaseException:
            sock.close()
            raise
        return sock

    def _read_loop(self, sock: socket.socket, stop: threading.Event) -> None:
        limit = self._config.max_backlog_bytes
        silence = self._config.broker_heartbeat
        clock = time.monotonic
        last_in = clock()
        self._resync.clear()
        while not stop.is_set():
            self.status.turn("read")
            if self._resync.is_set():
                raise ProtocolError("undecodable stream; resubscribing")
            if self._in_bytes - self._out_bytes > limit:
                # Bounded memory: stop reading and let Redis hold the rest. If it holds
                # too much it drops us, and the reconnect is counted and logged. The
                # silence is ours, not the broker's.
                stop.wait(0.01)
                last_in = clock()
                continue
            try:
                data = sock.recv(_READ_SIZE)
            except TimeoutError:
                quiet = clock() - last_in
                if quiet + 1e-3 >= silence:  # three timeouts of a third add up to it
                    msg = f"the broker answered nothing for {quiet:.1f}s (--broker-heartbeat)"
                    raise ConnectionError(msg) from None
                sock.sendall(self._command("PING"))  # any reply resets the silence
                continue
            if not data:
                raise ConnectionError("connection closed by the broker")
            last_in = clock()
            self._in_bytes += len(data)
            self._chunks.put(data)

    # -- decoding --------------------------------------------------------------------------

    def _process_loop(self, stop: threading.Event) -> None:
        parser = PubSubParser()
        chunks = self._chunks
        handle = self._handle
        while True:
            self.status.turn("decode")
            try:
                chunk = chunks.get(timeout=0.5)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if not chunk:  # _RESET
                if parser.pending:
                    self._drop("other", "undecodable", 1)
                parser.reset()
                continue
            self._out_bytes += len(chunk)
            try:
                payloads = parser.feed(chunk)
            except (ProtocolError, ValueError) as exc:
                # A broken or hostile server: drop the stream and subscribe afresh.
                _logger.warning("undecodable pub/sub stream from %s (%s); resubscribing",
                                self._config.masked_broker_url, str(exc)[:200])
                parser.reset()
                self._drop("other", "undecodable", 1)
                self._resync.set()
                continue
            for payload in payloads:
                try:
                    events = decode_envelope(payload)
                except UndecodableEvent:
                    self._drop("other", "undecodable", 1)
                    continue
                for event in events:
                    handle(event)


def _glob_escape(text: str) -> str:
    """``text`` matched literally in a Redis PSUBSCRIBE pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        part = sock.recv(1)
        if not part:
            raise ConnectionError("connection closed during the handshake")
        data += part
        if len(data) > 4096:
            raise ProtocolError("reply too long")
    return data


class KombuReceiver(_BaseReceiver):
    """Celery's event receiver over kombu, for every transport but plain Redis."""

    def __init__(
        self,
        config: ExporterConfig,
        app: Any,
        handle: EventSink,
        clock: Callable[[], float],
    ) -> None:
        super().__init__(config, clock)
        self._app = app
        self._handle = handle
        self._current: Any = None

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._consume(stop)
            except Exception as exc:  # noqa: BLE001 - any failure means reconnect
                if not stop.is_set():
                    self._on_lost(exc, stop)
            finally:
                self.status.connected = False

    def stop(self) -> None:
        current = self._current
        if current is not None:
            current.should_stop = True

    def _consume(self, stop: threading.Event) -> None:
        status = self.status
        handle = self._handle
        on_answered = self._on_connected
        pulse = _Pulse(self._config.broker_heartbeat * PING_AFTER, time.monotonic)

        base = self._app.events.Receiver

        class _Receiver(base):  # type: ignore[misc, valid-type]
            def on_consume_ready(self, connection: Any, channel: Any, *args: Any,
                                 **kwargs: Any) -> None:
                # The consuming connection (kombu's clone of ours) has connected, which
                # is a round trip on Redis (PING) and the AMQP handshake on RabbitMQ.
                super().on_consume_ready(connection, channel, *args, **kwargs)
                pulse.watch(connection, channel)
                on_answered()

            def on_iteration(self) -> None:
                status.turn("read")
                if stop.is_set():
                    self.should_stop = True
                pulse.check()

        heartbeat = amqp_heartbeat_interval(self._config.broker_heartbeat)
        with self._app.connection_for_read(heartbeat=heartbeat) as conn:
            conn.ensure_connection(max_retries=1, timeout=self._config.probe_timeout)
            receiver = _Receiver(conn, handlers={"*": handle}, app=self._app)
            receiver.connect_max_retries = 1
            self._current = receiver
            status.turn("read")
            for _ in receiver.consume(limit=None, timeout=None, safety_interval=1):
                status.turn("read")


def amqp_heartbeat_interval(broker_heartbeat: float) -> int:
    """The AMQP heartbeat we ask for (whole seconds): two of them fit in
    ``broker_heartbeat``, the silence after which a connection is declared down."""
    return max(1, int(broker_heartbeat // 2))


class _Pulse:
    """Makes an idle kombu connection prove, on a timer, that the broker still answers.

    Redis: a PING on the channel's client every ``every`` seconds, bounded by its
    ``socket_timeout`` (``probe_timeout``); kombu's own pub/sub health check runs only in
    its event loop, not in ``drain_events``, so without this a hung Redis would leave
    the receiver waiting for events for ever. RabbitMQ: kombu's heartbeat check (py-amqp
    sends ours when due and raises when two of the broker's are missed) at every turn of
    the loop. kombu runs it itself only when a drain times out, so a busy receiver would
    send no heartbeat and the broker would close it.
    """

    def __init__(self, every: float, clock: Callable[[], float]) -> None:
        self._every = every
        self._clock = clock
        self._client: Any = None
        self._heartbeats: Any = None
        self._last = 0.0

    def watch(self, connection: Any, channel: Any) -> None:
        client = getattr(channel, "client", None)
        self._client = client if callable(getattr(client, "ping", None)) else None
        beats = getattr(connection, "supports_heartbeats", False) and getattr(
            connection, "heartbeat", 0)
        self._heartbeats = connection if beats else None
        self._last = self._clock()

    def check(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.heartbeat_check()  # cheap: py-amqp acts only when due
        if self._client is None:
            return
        now = self._clock()
        if now - self._last < self._every:
            return
        self._client.ping()  # raises on silence: the consume loop reconnects
        self._last = self._clock()


class NoEventReceiver(_BaseReceiver):
    """Probe-only mode: no event can arrive, so nothing is read and no queue is declared.

    Its status says whether the broker answers, as the queue depth probe last found it
    (:meth:`probe_finished`), so ``/health`` and ``celery_exporter_broker_connected``
    stay true to what the exporter can see.
    """

    def run(self, stop: threading.Event) -> None:
        """Nothing to read; returns at once (no thread is needed)."""

    def probe_finished(self, error: str | None) -> None:
        if error is None:
            if not self.status.connected:
                self._on_connected()
            return
        was_connected = self.status.connected
        self.status.connected = False
        self.status.last_error = error
        if was_connected:
            _logger.warning("lost the broker %s (%s)", self._config.masked_broker_url, error)
