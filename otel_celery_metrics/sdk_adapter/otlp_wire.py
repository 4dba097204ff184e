"""An OTLP trace request assembled from spans a pool child already encoded (bytes only).

Protobuf's wire format lets a message be built from already-serialized parts: a
length-delimited field is its tag, the payload's length as a varint, and the payload;
repeated fields are those, one after another; fields may come in any order. So the
worker's main process batches relayed spans without decoding or re-encoding them:

``ExportTraceServiceRequest`` = field 1 (``ResourceSpans``) =
``resource part`` (the main process' resource and schema URL, encoded once) followed by,
per instrumentation scope, field 2 (``ScopeSpans``) = ``scope part`` (scope and schema
URL, encoded by the child) followed by field 2 (``Span``) per span.

Pure functions on bytes: no SDK, no protobuf runtime.
"""

from __future__ import annotations

from collections.abc import Iterable


def varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(number: int) -> bytes:
    return varint(number << 3 | 2)


_FIELD_1 = _length_delimited(1)
_FIELD_2 = _length_delimited(2)


def field(number: int, payload: bytes) -> bytes:
    """Field ``number`` of wire type 2 (message, bytes, string) holding ``payload``."""
    tag = _FIELD_1 if number == 1 else _FIELD_2 if number == 2 else _length_delimited(number)
    return tag + varint(len(payload)) + payload


def scope_spans(scope_part: bytes, spans: Iterable[bytes]) -> bytes:
    """One serialized ``ScopeSpans``: its scope part, then every span as field 2."""
    parts = [scope_part]
    for span in spans:
        parts.append(_FIELD_2)
        parts.append(varint(len(span)))
        parts.append(span)
    return b"".join(parts)


def trace_request(resource_part: bytes, scopes: Iterable[tuple[bytes, Iterable[bytes]]]) -> bytes:
    """A serialized ``ExportTraceServiceRequest`` with one ``ResourceSpans``.

    ``resource_part`` is a serialized ``ResourceSpans`` without scopes (resource, schema
    URL); ``scopes`` pairs each scope part (a serialized ``ScopeSpans`` without spans)
    with its serialized spans.
    """
    body = resource_part + b"".join(
        field(2, scope_spans(part, spans)) for part, spans in scopes
    )
    return field(1, body)
