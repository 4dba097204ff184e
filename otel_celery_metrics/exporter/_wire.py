"""Bytes on the wire -> event dicts: a Redis pub/sub stream parser and kombu's envelope.

The Redis receiver reads the subscription socket in large chunks and leaves the parsing
to the handler thread, so the socket drains as fast as Redis writes (Redis drops a
subscriber whose output buffer grows past its limit, 32 MB by default). This parser
takes those chunks as they come, split anywhere, and returns the published payloads.

A payload is kombu's JSON envelope; its ``body`` is base64 (Redis transport) and holds
one event, or a list of them (workers batch task events: ``task.multi``). On AMQP the
message body is the events themselves: :func:`decode_body`.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

_loads: Callable[[bytes | str], Any]
try:
    # Optional (the "exporter" extra installs it): parses events about 4x faster,
    # which is most of what an event costs.
    import orjson

    _loads = orjson.loads
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _loads = json.loads

_CRLF = b"\r\n"


class ProtocolError(ValueError):
    """The stream is not the RESP we expect (or Redis sent an error reply)."""


#: The longest pub/sub message the parser holds while it is incomplete. Celery events are
#: kilobytes (a ``task.multi`` batch a few hundred); Redis itself drops a subscriber whose
#: output buffer passes 32 MB by default. A longer one is a broken or hostile server.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class PubSubParser:
    """Incremental RESP2 parser for a connection in (P)SUBSCRIBE mode.

    Linear in the bytes fed, however the stream is split: the unfinished tail is kept in
    a ``bytearray`` that chunks are appended to, and the parser remembers how many bytes
    the message needs before it can complete (or that it needs a line end), so a long
    message read in small pieces is parsed once, when its last piece arrives. An
    unfinished message longer than ``max_message`` raises :class:`ProtocolError`: the
    receiver then drops the stream, counts it and resubscribes.
    """

    def __init__(self, max_message: int = MAX_MESSAGE_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message
        #: Buffer length at which the unfinished message can complete; 0: when a line
        #: end arrives.
        self._need = 0

    def reset(self) -> None:
        self._buffer = bytearray()
        self._need = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads of every complete ``(p)message``."""
        buf = self._buffer
        buf += data
        need = self._need
        if (len(buf) < need) if need else (buf.find(b"\n", len(buf) - len(data)) < 0):
            self._check_bound()
            return []  # nothing can have completed
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        self._need = 0
        while pos < end:
            line_end = buf.find(_CRLF, pos)
            if line_end < 0:
                break
            marker = bytes(buf[pos : pos + 1])
            if marker == b"*":
                parsed = _array(buf, line_end, end)
                if isinstance(parsed, int):
                    # Incomplete: wait for the next chunk (for ``parsed`` bytes, if known).
                    self._need = parsed - pos if parsed else 0
                    break
                items, pos = parsed
                if len(items) == 4 and items[0] == b"pmessage":
                    out.append(items[3])
                elif len(items) == 3 and items[0] == b"message":
                    out.append(items[2])
                # subscribe confirmations and pong replies carry nothing for us
            elif marker == b"-":
                text = bytes(buf[pos + 1 : line_end]).decode("utf-8", "replace")
                msg = f"Redis replied with an error: {text}"
                raise ProtocolError(msg)
            elif marker in (b"+", b":"):
                pos = line_end + 2  # simple replies (AUTH OK, PONG before subscribing)
            else:
                msg = f"unexpected RESP type {marker!r}"
                raise ProtocolError(msg)
        del buf[:pos]
        self._check_bound()
        return out

    def _check_bound(self) -> None:
        if len(self._buffer) > self._max or self._need > self._max:
            msg = (f"a pub/sub message longer than {self._max} bytes (the parser's bound): "
                   "not a Celery event stream")
            raise ProtocolError(msg)


def _array(buf: bytearray, header_end: int, end: int) -> tuple[list[bytes], int] | int:
    """The items of the array whose ``*N`` header ends at ``header_end``, and the position
    after it; when the buffer ends inside it, the buffer length it needs (0: unknown until
    a line end arrives)."""
    star = buf.rfind(b"*", 0, header_end)
    count = int(buf[star + 1 : header_end])
    pos = header_end + 2
    items: list[bytes] = []
    find = buf.find
    for _ in range(count):
        item_end = find(_CRLF, pos)
        if item_end < 0:
            return 0
        kind = buf[pos : pos + 1]
        if kind == b"$":
            length = int(buf[pos + 1 : item_end])
            if length < 0:
                # Only $-1 (a null bulk string) is RESP; any other negative length would
                # move the parser backwards, for ever (found writing bench/fuzz_events.py).
                if length != -1:
                    msg = f"negative bulk length {length} in a pub/sub reply"
                    raise ProtocolError(msg)
                items.append(b"")
                pos = item_end + 2
                continue
            data_start = item_end + 2
            data_end = data_start + length
            if data_end + 2 > end:
                return data_end + 2
            items.append(bytes(buf[data_start:data_end]))
            pos = data_end + 2
        elif kind == b":":
            items.append(bytes(buf[pos + 1 : item_end]))
            pos = item_end + 2
        else:
            msg = f"unexpected RESP item {bytes(kind)!r} in a pub/sub reply"
            raise ProtocolError(msg)
    return items, pos


class UndecodableEvent(ValueError):
    """A payload that is not a kombu envelope holding JSON events."""


def decode_envelope(payload: bytes) -> list[Any]:
    """A kombu Redis-transport message -> the event dicts in its body."""
    try:
        envelope = _loads(payload)
        body = envelope["body"]
        properties = envelope.get("properties") or {}
        if properties.get("body_encoding") == "base64":
            body = base64.b64decode(body, validate=False)
        content_type = envelope.get("content-type", "application/json")
        if content_type != "application/json":
            return _decode_other(body, content_type, envelope.get("content-encoding", "utf-8"))
        decoded = _loads(body)
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise UndecodableEvent(str(exc)[:200]) from None
    return decoded if isinstance(decoded, list) else [decoded]


def decode_body(body: bytes, content_type: str, encoding: str) -> list[Any]:
    """An AMQP message body (no envelope, no base64) -> the event dicts in it."""
    if content_type in ("application/json", ""):
        try:
            decoded = _loads(body)
        except (ValueError, TypeError) as exc:
            raise UndecodableEvent(str(exc)[:200]) from None
        return decoded if isinstance(decoded, list) else [decoded]
    return _decode_other(body, content_type, encoding or "utf-8")


def _decode_other(body: Any, content_type: str, encoding: str) -> list[Any]:
    # Apps that set event_serializer to something else; kombu knows every codec it has
    # registered (pickle is refused by kombu unless explicitly accepted; we never do).
    from kombu import serialization

    loads: Any = serialization.loads
    try:
        decoded = loads(body, content_type, encoding, accept={"json", "msgpack", "yaml"})
    except Exception as exc:  # noqa: BLE001 - any codec failure is an undecodable event
        raise UndecodableEvent(str(exc)[:200]) from None
    return decoded if isinstance(decoded, list) else [decoded]
