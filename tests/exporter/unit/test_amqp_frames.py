"""The AMQP delivery parser, fed frames written by py-amqp's own frame writer."""

from __future__ import annotations

import pytest
from amqp import Message
from amqp.serialization import loads

from otel_celery_metrics.exporter._amqp_frames import (
    HEARTBEAT_FRAME,
    BrokerClosed,
    DeliveryParser,
    FrameError,
    basic_ack,
    connection_close,
)
from otel_celery_metrics.exporter._wire import UndecodableEvent, decode_body
from tests.exporter.unit.amqp_wire import event_message, frames


def test_deliveries_split_anywhere_come_out_whole_with_their_properties() -> None:
    big = b'{"type": "task-sent", "args": "' + b"x" * 10_000 + b'"}'  # several body frames
    stream = frames(
        (1, "task.sent", event_message(b'{"type": "task-sent"}')),
        (2, "task.multi", event_message(big)),
        (3, "worker.heartbeat", Message(b"", content_type="application/x-msgpack")),
    ) + HEARTBEAT_FRAME
    for step in (1, 7, 100, len(stream)):
        parser = DeliveryParser()
        got = []
        for i in range(0, len(stream), step):
            got += parser.feed(stream[i : i + step])
        assert [(d.delivery_tag, d.routing_key, d.content_type, d.body) for d in got] == [
            (1, b"task.sent", "application/json", b'{"type": "task-sent"}'),
            (2, b"task.multi", "application/json", big),
            (3, b"worker.heartbeat", "application/x-msgpack", b""),
        ]
        assert {d.consumer_tag for d in got} == {b"events"}
        assert parser.pending == 0


def test_a_dead_lettered_message_names_why_rabbitmq_dropped_it() -> None:
    headers = {"x-death": [{"reason": "maxlen", "count": 1}], "x-first-death-reason": "maxlen",
               "x-first-death-queue": "celeryev.x"}
    stream = frames((9, "task.succeeded", event_message(b"{}", application_headers=headers)),
                    (10, "task.sent", event_message(b"{}", application_headers={"a": "b"})))
    first, second = DeliveryParser().feed(stream)
    assert (first.death_reason, first.content_encoding) == ("maxlen", "utf-8")
    assert second.death_reason == ""
    assert not first.redelivered


def test_a_redelivery_is_flagged() -> None:
    (again,) = DeliveryParser().feed(
        frames((4, "task.sent", event_message(b"{}")), redelivered=True))
    assert (again.redelivered, again.delivery_tag, again.routing_key) == (True, 4, b"task.sent")


def test_the_broker_closing_the_connection_is_an_error_that_says_why() -> None:
    close = bytes(connection_close("CONNECTION_FORCED - broker shutdown"))
    with pytest.raises(BrokerClosed, match="closed the connection: 200 CONNECTION_FORCED"):
        DeliveryParser().feed(close)
    with pytest.raises(FrameError):
        DeliveryParser().feed(HEARTBEAT_FRAME[:-1] + b"\x00")


def test_our_batched_ack_is_the_frame_py_amqp_would_write() -> None:
    frame = basic_ack(1, 123_456, multiple=True)
    assert frame[:3] == b"\x01\x00\x01" and frame[-1] == 0xCE
    payload = frame[7:-1]
    assert payload[:4] == b"\x00\x3c\x00\x50"  # basic.ack
    assert loads("Lb", payload, 4)[0] == [123_456, True]


def test_bodies_decode_as_the_redis_path_does() -> None:
    assert decode_body(b'[{"type": "a"}, {"type": "b"}]', "application/json", "utf-8") == [
        {"type": "a"}, {"type": "b"}]
    assert decode_body(b'{"type": "a"}', "", "") == [{"type": "a"}]
    with pytest.raises(UndecodableEvent):
        decode_body(b"{not json", "application/json", "utf-8")
    with pytest.raises(UndecodableEvent):
        decode_body(b"\x80\x04K\x01.", "application/x-python-serialize", "binary")
