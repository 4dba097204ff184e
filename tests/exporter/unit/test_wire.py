"""The Redis pub/sub parser and kombu envelope decoding."""

from __future__ import annotations

import base64
import json

import pytest

from otel_celery_metrics.exporter._wire import (
    ProtocolError,
    PubSubParser,
    UndecodableEvent,
    decode_envelope,
)


def bulk(data: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(data), data)


def pmessage(payload: bytes, channel: bytes = b"/0.celeryev/task.sent") -> bytes:
    return b"*4\r\n" + bulk(b"pmessage") + bulk(b"/0.celeryev/*") + bulk(channel) + bulk(payload)


def envelope(body: object, encode: bool = True) -> bytes:
    raw = json.dumps(body).encode()
    return json.dumps(
        {
            "body": base64.b64encode(raw).decode() if encode else raw.decode(),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "properties": {"body_encoding": "base64"} if encode else {},
        }
    ).encode()


STREAM = (
    b"*3\r\n"
    + bulk(b"psubscribe")
    + bulk(b"/0.celeryev/*")
    + b":1\r\n"
    + pmessage(b"first\r\nwith CRLF inside")
    + b"*3\r\n"
    + bulk(b"message")
    + bulk(b"chan")
    + bulk(b"second")
    + b"*2\r\n"
    + bulk(b"pong")
    + bulk(b"")
    + pmessage(b"")
)


def test_parser_returns_payloads_however_the_stream_is_split() -> None:
    expected = [b"first\r\nwith CRLF inside", b"second", b""]
    for cut in range(1, len(STREAM)):
        parser = PubSubParser()
        got = parser.feed(STREAM[:cut]) + parser.feed(STREAM[cut:])
        assert got == expected, f"split at {cut}"
        assert parser.pending == 0
    byte_by_byte = PubSubParser()
    got = [p for i in range(len(STREAM)) for p in byte_by_byte.feed(STREAM[i : i + 1])]
    assert got == expected


def test_parser_raises_on_an_error_reply_or_garbage() -> None:
    with pytest.raises(ProtocolError, match="NOAUTH"):
        PubSubParser().feed(b"-NOAUTH Authentication required.\r\n")
    with pytest.raises(ProtocolError):
        PubSubParser().feed(b"?what\r\n")


def test_parser_never_loops_on_a_negative_bulk_length() -> None:
    # Found while writing bench/fuzz_events.py: "$-12" moved the parser back to the start
    # of its buffer and the decode thread spun for ever (from a broken or hostile Redis).
    # Run in a thread so a regression fails here instead of hanging the suite.
    import threading

    outcome: list[object] = []

    def feed() -> None:
        try:
            outcome.append(PubSubParser().feed(b"*1\r\n$-12\r\n"))
        except ProtocolError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the parser loops on a negative bulk length"
    assert isinstance(outcome[0], ProtocolError)
    assert "negative bulk length -12" in str(outcome[0])
    # A null bulk string ($-1) is RESP: it carries nothing and the stream goes on.
    parser = PubSubParser()
    assert parser.feed(b"*1\r\n$-1\r\n*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nok\r\n") == [b"ok"]


def test_envelope_with_one_event_or_a_batch() -> None:
    event = {"type": "task-sent", "uuid": "1"}
    assert decode_envelope(envelope(event)) == [event]
    assert decode_envelope(envelope([event, event])) == [event, event]
    assert decode_envelope(envelope(event, encode=False)) == [event]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"nobody": 1}',
        json.dumps({"body": "!!!notbase64", "properties": {"body_encoding": "base64"}}).encode(),
        json.dumps(
            {
                "body": base64.b64encode(b"\xff\xff").decode(),
                "properties": {"body_encoding": "base64"},
            }
        ).encode(),
    ],
)
def test_undecodable_payloads_raise_one_known_error(payload: bytes) -> None:
    with pytest.raises(UndecodableEvent):
        decode_envelope(payload)


def test_a_long_message_in_one_byte_reads_is_parsed_once_in_linear_time() -> None:
    # The unfinished tail was re-copied and re-parsed on every read: quadratic, so 2 MB in
    # 1-byte reads took 2 TB of copying. Now each byte is an append (50 MB: bench/
    # pubsub_parser.py; a timed unit test would be noise).
    payload = bytes(range(256)) * (2 * 1024 * 1024 // 256)
    stream = pmessage(payload) + pmessage(b"next")
    parser = PubSubParser()
    view = memoryview(stream)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += parser.feed(view[i : i + 1])
    assert got == [payload, b"next"]
    assert parser.pending == 0


def test_a_message_past_the_bound_is_a_protocol_error_not_unbounded_memory() -> None:
    parser = PubSubParser(max_message=1024)
    # The announced length alone is enough to refuse it: nothing is buffered for it.
    with pytest.raises(ProtocolError, match="longer than 1024 bytes"):
        parser.feed(b"*4\r\n" + bulk(b"pmessage") + bulk(b"p") + bulk(b"c") + b"$999999\r\n")
    parser.reset()
    with pytest.raises(ProtocolError, match="longer than 1024 bytes"):  # a line without end
        for _ in range(3):
            parser.feed(b"+" + b"x" * 500)
    within = PubSubParser(max_message=1024)
    assert within.feed(pmessage(b"y" * 900)) == [b"y" * 900]
