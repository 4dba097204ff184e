"""The RabbitMQ (AMQP 0-9-1) event receiver: our own queue on the event exchange, read lean.

kombu opens the connection (URL, credentials, TLS, ``broker_use_ssl``, virtual host)
and py-amqp declares the queues and starts the consumers. Then the receiver reads the
socket itself in large chunks and splits deliveries with :mod:`._amqp_frames`, decodes
bodies with :func:`._wire.decode_body` (orjson) and acknowledges in batches: one
``basic.ack multiple`` per chunk read, never one per message, before the chunk's
events are handled.

A lost connection: RabbitMQ requeues what it had not seen acknowledged, and delivers it
again flagged ``redelivered``. Some of that we had counted (its ack was written to a
connection already dead), some never reached us. The receiver remembers a hash of the
last ``2 * PREFETCH`` message bodies it handled and skips a redelivered message whose
body it has counted, so a network blip neither loses nor double-counts events. The same
holds for what the requeue pushes out of a full queue: a dropped message it had counted
is not counted as dropped.

Why acknowledgements at all, on a transient queue: without them RabbitMQ ignores the
prefetch and pushes the whole backlog at us, so a burst would sit in socket buffers and
our memory instead of in the queue, where its length limit and TTL apply and where
what the broker drops is counted. With ``PREFETCH`` unacknowledged messages at most,
the exporter's memory stays flat at any burst.

Queues (names carry this process's id, see :func:`queue_names`):

- the *event queue*, bound to the event exchange (``celeryev``, topic) with ``#``.
  Not durable; it expires ``event_queue_expires`` after we disconnect (a network blip
  loses nothing; a broker restart deletes it and the receiver declares it again).
  ``x-message-ttl``, ``x-max-length`` and ``x-max-length-bytes`` bound it; past the
  length limits RabbitMQ drops the oldest messages (``x-overflow: drop-head``).
- the *drop queue*: what the event queue drops (TTL or length) is dead-lettered here
  through a per-exporter fanout exchange. The receiver consumes it on the same channel,
  with the same batched acknowledgements (a drop notice in flight when the connection
  is lost comes back), and counts each event in
  ``celery_exporter_events_dropped_total{reason="broker_queue_full"|"broker_expired"}``,
  by its type: the routing key names it, except in a worker's batch (``task.multi``),
  whose body is decoded and each event in it counted. It is bounded too: past its own
  limit RabbitMQ discards without telling anyone, and the docs say so.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.exporter._amqp_frames import (
    HEARTBEAT_FRAME,
    Delivery,
    DeliveryParser,
    basic_ack,
    connection_close,
)
from otel_celery_metrics.exporter._wire import UndecodableEvent, decode_body
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.receiver import (
    DropSink,
    EventSink,
    _BaseReceiver,
    amqp_heartbeat_interval,
)

_logger = logging.getLogger(__name__)

#: Unacknowledged messages RabbitMQ may have in flight to us.
PREFETCH = 2000
#: Messages the drop queue holds while the exporter is stalled (past it: uncounted).
DROP_QUEUE_MAX_LENGTH = 1_000_000
_READ_SIZE = 1 << 20
_QUIET = 0.5  # socket wait: ``stop`` and heartbeats are checked this often
_EVENTS_TAG = b"events"
_DROPS_TAG = b"drops"
_DEATH_REASONS = {"maxlen": "broker_queue_full", "expired": "broker_expired"}
#: Celery's dispatcher publishes a buffered group of events as ``<group>.multi``.
_BATCH_SUFFIX = b".multi"
_OTHER = "other"  # the drop sink's type for anything it does not know


def queue_names(prefix: str = "celeryev.otel-exporter") -> tuple[str, str, str]:
    """(event queue, drop queue, dead-letter exchange) unique to this process."""
    ident = f"{prefix}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    return ident, f"{ident}.dropped", f"{ident}.dlx"


def event_queue_arguments(config: ExporterConfig, dead_letter_exchange: str) -> dict[str, Any]:
    """The ``x-`` arguments of the event queue; docs/exporter.md lists them."""
    return {
        "x-message-ttl": int(config.event_queue_ttl * 1000),
        "x-expires": int(config.event_queue_expires * 1000),
        "x-max-length": config.event_queue_max_length,
        "x-max-length-bytes": config.event_queue_max_bytes,
        "x-overflow": "drop-head",
        "x-dead-letter-exchange": dead_letter_exchange,
    }


def drop_queue_arguments(config: ExporterConfig) -> dict[str, Any]:
    # Read as fast as RabbitMQ drops (counting costs a few µs), so this rarely holds much;
    # its bound only matters when the whole exporter is stalled.
    return {
        "x-expires": int(config.event_queue_expires * 1000),
        "x-max-length": DROP_QUEUE_MAX_LENGTH,
        "x-max-length-bytes": config.event_queue_max_bytes,
        "x-overflow": "drop-head",
    }


class AmqpEventReceiver(_BaseReceiver):
    """Events from RabbitMQ through our own bounded queue, acknowledged in batches."""

    def __init__(
        self,
        config: ExporterConfig,
        app: Any,
        handle: EventSink,
        drop: DropSink,
        clock: Callable[[], float],
        *,
        names: tuple[str, str, str] | None = None,
    ) -> None:
        super().__init__(config, clock)
        self._app = app
        self._handle = handle
        self._drop = drop
        self.event_queue, self.drop_queue, self.dead_letter_exchange = names or queue_names()
        self._channel = 1
        self._heartbeat = 0.0
        self._last_out = 0.0
        #: hash() of the bodies handled lately: what a redelivery may repeat.
        self._recent: deque[int] = deque(maxlen=2 * PREFETCH)
        self._counted_before: set[int] = set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                # The broker may lower the heartbeat; we send ours at half of it and
                # declare the connection lost after two silent intervals.
                conn = self._app.connection_for_read(
                    heartbeat=amqp_heartbeat_interval(self._config.broker_heartbeat))
                conn.ensure_connection(max_retries=1, timeout=self._config.probe_timeout)
            except Exception as exc:  # noqa: BLE001 - any failure means retry
                self._on_lost(exc, stop)
                continue
            try:
                sock, parser = self._start_consuming(conn)
                self._on_connected()
                self._read_loop(sock, parser, stop)
            except Exception as exc:  # noqa: BLE001 - any failure means reconnect
                if not stop.is_set():
                    self._on_lost(exc, stop)
            finally:
                self.status.connected = False
                self._close(conn, stop.is_set())
        if self._ever_connected:
            self.delete_queues()

    # -- setup (py-amqp) -------------------------------------------------------------------

    def _start_consuming(self, conn: Any) -> tuple[socket.socket, DeliveryParser]:
        raw = conn.connection
        if not hasattr(raw, "transport") or not hasattr(raw.transport, "sock"):
            msg = (f"--receiver=amqp needs the py-amqp transport, not {type(raw).__name__}; "
                   "use --receiver=kombu")
            raise RuntimeError(msg)
        channel = raw.channel()
        self._channel = int(channel.channel_id)
        cfg = self._config
        exchange = str(self._app.conf.event_exchange or "celeryev")
        # As Celery's event dispatcher declares it, so the declarations agree.
        channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
        channel.exchange_declare(
            self.dead_letter_exchange, "fanout", durable=False, auto_delete=True
        )
        channel.queue_declare(
            self.drop_queue, durable=False, auto_delete=False,
            arguments=drop_queue_arguments(cfg),
        )
        channel.queue_bind(self.drop_queue, self.dead_letter_exchange, "")
        _, waiting, _ = channel.queue_declare(
            self.event_queue, durable=False, auto_delete=False,
            arguments=event_queue_arguments(cfg, self.dead_letter_exchange),
        )
        channel.queue_bind(self.event_queue, exchange, "#")
        channel.basic_qos(0, PREFETCH, False)
        # nowait: deliveries from a queue that already holds messages (a reconnect) can
        # follow a consume-ok at once; py-amqp waiting for the next one would take them.
        # From here on every frame goes to our parser, which skips the consume-oks.
        channel.basic_consume(self.drop_queue, consumer_tag=_DROPS_TAG.decode(), no_ack=False,
                              nowait=True)
        channel.basic_consume(self.event_queue, consumer_tag=_EVENTS_TAG.decode(),
                              no_ack=False, nowait=True)
        _logger.info("reading events from queue %s (%d waiting)", self.event_queue, waiting)
        transport = raw.transport
        sock: socket.socket = transport.sock
        parser = DeliveryParser()
        leftover = bytes(getattr(transport, "_read_buffer", b"") or b"")
        self._heartbeat = float(getattr(raw, "heartbeat", 0) or 0)
        if leftover:  # py-amqp reads exact frames, so this stays empty; be safe anyway
            self._dispatch(parser.feed(leftover), sock)
        sock.settimeout(_QUIET)
        self._counted_before = set(self._recent)
        return sock, parser

    # -- reading ---------------------------------------------------------------------------

    def _read_loop(self, sock: socket.socket, parser: DeliveryParser, stop: threading.Event
                   ) -> None:
        status = self.status
        heartbeat = self._heartbeat
        tls = isinstance(sock, ssl.SSLSocket)
        last_in = self._last_out = time.monotonic()
        while not stop.is_set():
            status.turn("read")
            try:
                data = sock.recv(_READ_SIZE)
            except TimeoutError:
                now = time.monotonic()
                if heartbeat:
                    if now - self._last_out >= heartbeat / 2:
                        sock.sendall(HEARTBEAT_FRAME)
                        self._last_out = now
                    if now - last_in > heartbeat * 2:
                        msg = (f"the broker sent nothing for {now - last_in:.1f}s, two "
                               f"heartbeats of {heartbeat:g}s (--broker-heartbeat)")
                        raise ConnectionError(msg) from None
                continue
            if not data:
                raise ConnectionError("connection closed by the broker")
            if tls:
                data = _read_ready_records(sock, data)
            last_in = time.monotonic()
            self._dispatch(parser.feed(data), sock)
            if heartbeat and last_in - self._last_out >= heartbeat / 2:
                # Busy but sending nothing (only drops arriving): the broker still
                # needs to hear from us within its heartbeat.
                sock.sendall(HEARTBEAT_FRAME)
                self._last_out = last_in

    def _dispatch(self, deliveries: list[Any], sock: socket.socket) -> None:
        if not deliveries:
            return
        # Delivery tags count per channel, across both consumers: one ack covers all.
        sock.sendall(basic_ack(self._channel, deliveries[-1].delivery_tag, multiple=True))
        self._last_out = time.monotonic()
        handle = self._handle
        remember = self._recent.append
        counted_before = self._counted_before
        for delivery in deliveries:
            fingerprint = hash(delivery.body)
            if counted_before and fingerprint in counted_before:
                # Counted on the lost connection and delivered again: redelivered (its
                # ack never arrived), or dropped from the full queue it was requeued to.
                counted_before.discard(fingerprint)
                continue
            remember(fingerprint)
            if delivery.consumer_tag == _EVENTS_TAG:
                try:
                    events = decode_body(
                        delivery.body, delivery.content_type, delivery.content_encoding
                    )
                except UndecodableEvent:
                    self._drop(_OTHER, "undecodable", 1)
                else:
                    for event in events:
                        handle(event)
            else:
                self._count_dropped(delivery)

    def _count_dropped(self, delivery: Delivery) -> None:
        """Count what RabbitMQ dropped from the event queue, one drop per event."""
        reason = _DEATH_REASONS.get(delivery.death_reason, "broker_dropped")
        routing_key = delivery.routing_key
        if not routing_key.endswith(_BATCH_SUFFIX):
            # One event per message, and its routing key names it: no decoding. Drops come
            # when the exporter is already behind; parsing them would put it further behind.
            self._drop(routing_key.decode("ascii", "replace").replace(".", "-"), reason, 1)
            return
        # A worker's batch (``task.multi``): a JSON list of events, each counted by its type.
        try:
            events = decode_body(delivery.body, delivery.content_type, delivery.content_encoding)
        except UndecodableEvent:
            self._drop(_OTHER, "undecodable", 1)  # as if it had been delivered
            return
        for kind, count in Counter(map(_event_type, events)).items():
            self._drop(kind, reason, count)

    def delete_queues(self) -> None:
        """A clean stop leaves nothing on the broker: our two queues go now (x-expires is
        for a crash), the dead-letter exchange with them (auto-delete). On a connection of
        its own, after ours closed: queue.delete waits for delete-ok, which our reader
        would otherwise have to pick out of the delivery stream."""
        try:
            with self._app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=self._config.probe_timeout)
                channel = conn.channel()
                for name in (self.event_queue, self.drop_queue):
                    channel.queue_delete(name)
                channel.close()
        except Exception as exc:  # noqa: BLE001 - stopping anyway; x-expires removes them
            _logger.warning(
                "could not delete the event queue %s on stop (%s); RabbitMQ removes it %.0fs "
                "after we left (x-expires)", self.event_queue, exc,
                self._config.event_queue_expires,
            )

    def _close(self, conn: Any, stopping: bool) -> None:
        raw = getattr(conn, "connection", None)
        sock = getattr(getattr(raw, "transport", None), "sock", None)
        if stopping and sock is not None:
            with contextlib.suppress(OSError):  # close-ok is not worth waiting for
                sock.sendall(connection_close())
        try:
            conn.collect()  # drops py-amqp's state without another round trip
        except Exception:  # closing a dead connection may fail any way
            _logger.debug("closing the AMQP connection failed", exc_info=True)


def _event_type(event: object) -> str:
    kind = event.get("type") if isinstance(event, dict) else None
    # The handlers' drop() caps unknown types to "other"; a non-string must not get there.
    return kind if isinstance(kind, str) else _OTHER


def _read_ready_records(sock: socket.socket, first: bytes) -> bytes:
    """``first`` plus every TLS record that can be read now without waiting.

    A TLS socket's ``recv`` returns one record (16 KiB at most) however much is asked for,
    where a plain socket returns all the kernel holds: without this, each 16 KiB would be
    its own loop turn, acknowledgement and dispatch (1.7x the CPU per event of
    ``amqp://`` in bench/README-exporter.md). Records are read until none is complete or
    ``_READ_SIZE`` is reached; a partial record stays in OpenSSL's buffer for the next read.
    """
    parts = [first]
    total = len(first)
    sock.settimeout(0.0)
    try:
        while total < _READ_SIZE:
            more = sock.recv(_READ_SIZE - total)
            if not more:
                break  # closed: the next blocking read says so
            parts.append(more)
            total += len(more)
    except (ssl.SSLWantReadError, BlockingIOError):
        pass
    finally:
        sock.settimeout(_QUIET)
    return b"".join(parts) if len(parts) > 1 else first
