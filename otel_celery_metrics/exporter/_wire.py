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


class PubSubParser:
    """Incremental RESP2 parser for a connection in (P)SUBSCRIBE mode."""

    def __init__(self) -> None:
        self._buffer = b""

    def reset(self) -> None:
        self._buffer = b""

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the payloads of every complete ``(p)message``."""
        buf = self._buffer + data if self._buffer else data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        while pos < end:
            line_end = buf.find(_CRLF, pos)
            if line_end < 0:
                break
            marker = buf[pos : pos + 1]
            if marker == b"*":
                parsed = _array(buf, line_end, end)
                if parsed is None:
                    break  # incomplete: wait for the next chunk
                items, pos = parsed
                if len(items) == 4 and items[0] == b"pmessage":
                    out.append(items[3])
                elif len(items) == 3 and items[0] == b"message":
                    out.append(items[2])
                # subscribe confirmations and pong replies carry nothing for us
            elif marker == b"-":
                text = buf[pos + 1 : line_end].decode("utf-8", "replace")
                msg = f"Redis replied with an error: {text}"
                raise ProtocolError(msg)
            elif marker in (b"+", b":"):
                pos = line_end + 2  # simple replies (AUTH OK, PONG before subscribing)
            else:
                msg = f"unexpected RESP type {marker!r}"
                raise ProtocolError(msg)
        self._buffer = buf[pos:]
        return out


def _array(buf: bytes, header_end: int, end: int) -> tuple[list[bytes], int] | None:
    """The items of the array whose ``*N`` header ends at ``header_end``, and the position
    after it; None when the buffer ends inside it."""
    star = buf.rfind(b"*", 0, header_end)
    count = int(buf[star + 1 : header_end])
    pos = header_end + 2
    items: list[bytes] = []
    find = buf.find
    for _ in range(count):
        item_end = find(_CRLF, pos)
        if item_end < 0:
            return None
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
                return None
            items.append(buf[data_start:data_end])
            pos = data_end + 2
        elif kind == b":":
            items.append(buf[pos + 1 : item_end])
            pos = item_end + 2
        else:
            msg = f"unexpected RESP item {kind!r} in a pub/sub reply"
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
