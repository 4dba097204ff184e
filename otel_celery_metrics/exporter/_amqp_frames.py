"""AMQP 0-9-1 frames on a consuming channel -> deliveries, and the few frames we send.

py-amqp opens the connection, declares and starts the consumers (kombu gives it the
URL, TLS and credentials). From then on the exporter reads the socket itself in large
chunks and splits them here: py-amqp's generic frame reader costs about 30 µs per
message in Python, twice what handling the event costs; this parser only looks at
what a delivery carries (consumer tag, delivery tag, routing key, content type and
encoding, the dead-letter reason, the body) and costs a few µs.

A frame is ``type(1) channel(2) size(4) payload(size) 0xCE``. A delivery is a
``basic.deliver`` method frame, a content header frame and body frames (none when the
body is empty).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
_FRAME_END = 0xCE
_HEAD = struct.Struct(">BHI")
_CLASS_METHOD = struct.Struct(">HH")
_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")
_ACK = struct.Struct(">BHIHHQB")
_REPLY = struct.Struct(">HH")

#: (class, method) ids we act on.
_BASIC_DELIVER = (60, 60)
_BASIC_CANCEL = (60, 30)
_CONNECTION_CLOSE = (10, 50)
_CHANNEL_CLOSE = (20, 40)
_FIRST_DEATH_REASON = b"\x14x-first-death-reasonS"

HEARTBEAT_FRAME = bytes((FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, _FRAME_END))


class FrameError(ValueError):
    """Bytes that are not the AMQP frames a consuming channel receives."""


class BrokerClosed(ConnectionError):
    """The broker closed the connection or the channel, or cancelled our consumer."""


class Delivery(NamedTuple):
    consumer_tag: bytes
    delivery_tag: int
    #: RabbitMQ delivered it before, on a connection that was lost unacknowledged.
    redelivered: bool
    routing_key: bytes
    content_type: str
    content_encoding: str
    #: ``x-first-death-reason`` of a dead-lettered message ("maxlen", "expired"), else "".
    death_reason: str
    body: bytes


class DeliveryParser:
    """Incremental: feed chunks split anywhere, get complete deliveries back."""

    def __init__(self) -> None:
        self._buffer = b""
        self._method: tuple[bytes, int, bool, bytes] | None = None
        self._header: tuple[str, str, str] = ("", "", "")
        self._size = 0
        self._parts: list[bytes] = []
        self._have = 0

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Delivery]:
        buf = self._buffer + data if self._buffer else data
        out: list[Delivery] = []
        pos = 0
        end = len(buf)
        head = _HEAD.unpack_from
        while end - pos >= 8:
            kind, _channel, size = head(buf, pos)
            frame_end = pos + 7 + size
            if frame_end >= end:
                break  # incomplete: wait for the next chunk
            if buf[frame_end] != _FRAME_END:
                msg = f"frame of type {kind} does not end with 0xCE"
                raise FrameError(msg)
            start = pos + 7
            if kind == FRAME_BODY:
                part = buf[start:frame_end]
                self._parts.append(part)
                self._have += len(part)
                if self._have >= self._size:
                    out.append(self._complete())
            elif kind == FRAME_METHOD:
                ids = _CLASS_METHOD.unpack_from(buf, start)
                if ids == _BASIC_DELIVER:
                    self._method = _deliver(buf, start + 4)
                else:
                    _other_method(ids, buf, start + 4)
            elif kind == FRAME_HEADER:
                self._size = _U64.unpack_from(buf, start + 4)[0]
                self._header = _properties(buf, start + 12, frame_end)
                self._parts = []
                self._have = 0
                if self._size == 0:
                    out.append(self._complete())
            elif kind != FRAME_HEARTBEAT:
                msg = f"unexpected AMQP frame type {kind}"
                raise FrameError(msg)
            pos = frame_end + 1
        self._buffer = buf[pos:]
        return out

    def _complete(self) -> Delivery:
        method = self._method
        if method is None:
            msg = "content without a basic.deliver"
            raise FrameError(msg)
        self._method = None
        parts = self._parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        content_type, encoding, reason = self._header
        return Delivery(*method, content_type, encoding, reason, body)


def _shortstr(buf: bytes, pos: int) -> tuple[bytes, int]:
    length = buf[pos]
    return buf[pos + 1 : pos + 1 + length], pos + 1 + length


def _deliver(buf: bytes, pos: int) -> tuple[bytes, int, bool, bytes]:
    consumer_tag, pos = _shortstr(buf, pos)
    delivery_tag = _U64.unpack_from(buf, pos)[0]
    redelivered = bool(buf[pos + 8] & 1)
    _exchange, pos = _shortstr(buf, pos + 9)
    routing_key, _ = _shortstr(buf, pos)
    return consumer_tag, delivery_tag, redelivered, routing_key


def _properties(buf: bytes, pos: int, end: int) -> tuple[str, str, str]:
    """content-type, content-encoding and a dead-letter reason from a content header."""
    flags = _U16.unpack_from(buf, pos)[0]
    pos += 2
    while _U16.unpack_from(buf, pos - 2)[0] & 1:  # continuation flag words
        pos += 2
    content_type = encoding = reason = ""
    if flags & 0x8000:
        raw, pos = _shortstr(buf, pos)
        content_type = raw.decode("ascii", "replace")
    if flags & 0x4000:
        raw, pos = _shortstr(buf, pos)
        encoding = raw.decode("ascii", "replace")
    if flags & 0x2000:
        # Only dead-lettered messages carry this header; a find beats parsing the table.
        at = buf.find(_FIRST_DEATH_REASON, pos, end)
        if at >= 0:
            at += len(_FIRST_DEATH_REASON)
            length = int.from_bytes(buf[at : at + 4], "big")
            reason = buf[at + 4 : at + 4 + length].decode("ascii", "replace")
    return content_type, encoding, reason


def _other_method(ids: tuple[int, int], buf: bytes, pos: int) -> None:
    if ids in (_CONNECTION_CLOSE, _CHANNEL_CLOSE):
        code = _U16.unpack_from(buf, pos)[0]
        text, _ = _shortstr(buf, pos + 2)
        what = "connection" if ids == _CONNECTION_CLOSE else "channel"
        msg = f"the broker closed the {what}: {code} {text.decode('utf-8', 'replace')}"
        raise BrokerClosed(msg)
    if ids == _BASIC_CANCEL:
        raise BrokerClosed("the broker cancelled the consumer (event queue deleted?)")
    # Anything else (connection.blocked/unblocked, ...) carries nothing for us.


def basic_ack(channel: int, delivery_tag: int, *, multiple: bool) -> bytes:
    """A ``basic.ack`` method frame."""
    return _ACK.pack(
        FRAME_METHOD, channel, 13, 60, 80, delivery_tag, 1 if multiple else 0
    ) + bytes((_FRAME_END,))


def connection_close(reply_text: str = "exporter stopping") -> bytes:
    """A ``connection.close`` method frame (we do not wait for close-ok)."""
    text = reply_text.encode()[:255]
    payload = _REPLY.pack(10, 50) + _U16.pack(200) + bytes((len(text),)) + text + _REPLY.pack(0, 0)
    return _HEAD.pack(FRAME_METHOD, 0, len(payload)) + payload + bytes((_FRAME_END,))
