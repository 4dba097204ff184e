"""AMQP deliveries as RabbitMQ sends them, encoded by py-amqp's own frame writer (not ours)."""

from __future__ import annotations

from types import SimpleNamespace

from amqp import Message
from amqp.method_framing import frame_writer
from amqp.serialization import dumps


def frames(*deliveries: tuple[int, str, Message], frame_max: int = 4096,
           redelivered: bool = False, consumer_tag: str = "events") -> bytes:
    """The frames of these ``(delivery tag, routing key, message)`` deliveries."""
    written: list[bytes] = []
    transport = SimpleNamespace(write=lambda data: written.append(bytes(data)))
    write = frame_writer(SimpleNamespace(frame_max=frame_max, bytes_sent=0), transport)
    for tag, routing_key, message in deliveries:
        args = dumps("sLbss", [consumer_tag, tag, redelivered, "celeryev", routing_key])
        write(1, 1, (60, 60), args, message)
    return b"".join(written)


def event_message(body: bytes, **properties: object) -> Message:
    return Message(body, content_type="application/json", content_encoding="utf-8",
                   **properties)
