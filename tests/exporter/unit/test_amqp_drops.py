"""What RabbitMQ dead-letters from the event queue is counted per event, by type and reason."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client.exposition import generate_latest

from otel_celery_metrics.exporter._amqp_frames import DeliveryParser
from otel_celery_metrics.exporter.amqp_receiver import AmqpEventReceiver
from otel_celery_metrics.exporter.service import Exporter
from tests.exporter.support import total, value
from tests.exporter.unit.amqp_wire import event_message, frames

DROPPED = "celery_exporter_events_dropped_total"


class Socket:
    """Takes our batched acks; the receiver writes nothing else while dispatching."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(data)


def dead_lettered(reason: str, *deliveries: tuple[int, str, bytes]) -> bytes:
    """Drop-queue deliveries as RabbitMQ sends them: ``x-first-death-reason`` set."""
    headers = {"x-first-death-reason": reason, "x-death": [{"reason": reason, "count": 1}]}
    return frames(*((tag, key, event_message(body, application_headers=headers))
                    for tag, key, body in deliveries), consumer_tag="drops")


def feed(exporter: Exporter, stream: bytes) -> str:
    receiver = exporter.receiver
    assert isinstance(receiver, AmqpEventReceiver)
    receiver._dispatch(DeliveryParser().feed(stream), Socket())  # type: ignore[arg-type]
    with exporter.instruments.collect_lock:
        return generate_latest(exporter.registry).decode()


def task_event(kind: str, n: int) -> dict[str, Any]:
    return {"type": kind, "uuid": f"t-{n}", "hostname": "celery@a", "timestamp": 1.0}


def test_a_dropped_task_multi_batch_counts_each_event_by_its_type(make_exporter) -> None:
    exporter = make_exporter(broker_url="amqp://h//")
    batch = [task_event("task-received", 1), task_event("task-started", 1),
             task_event("task-succeeded", 1), task_event("task-received", 2)]
    text = feed(exporter, dead_lettered(
        "maxlen",
        (1, "task.multi", json.dumps(batch).encode()),
        (2, "worker.heartbeat", b'{"type": "worker-heartbeat"}'),
    ) + dead_lettered("expired", (3, "task.multi", json.dumps(batch[2:]).encode())))
    full = {"reason": "broker_queue_full"}
    assert value(text, DROPPED, type="task-received", **full) == 2
    assert value(text, DROPPED, type="task-started", **full) == 1
    assert value(text, DROPPED, type="task-succeeded", **full) == 1
    assert value(text, DROPPED, type="worker-heartbeat", **full) == 1
    assert value(text, DROPPED, type="task-succeeded", reason="broker_expired") == 1
    assert value(text, DROPPED, type="task-received", reason="broker_expired") == 1
    assert total(text, DROPPED) == 7  # events, not messages (3)
    assert value(text, DROPPED, type="other") is None


def test_a_dropped_batch_that_does_not_decode_is_one_undecodable_drop(make_exporter) -> None:
    exporter = make_exporter(broker_url="amqp://h//")
    text = feed(exporter, dead_lettered(
        "maxlen",
        (1, "task.multi", b"[{not json"),
        # Odd members: not a dict, a type that is not a string, an unknown type.
        (2, "task.multi", b'[1, {"type": ["x"]}, {"type": "made-up"}, {"type": "task-sent"}]'),
    ))
    assert value(text, DROPPED, type="other", reason="undecodable") == 1
    assert value(text, DROPPED, type="other", reason="broker_queue_full") == 3
    assert value(text, DROPPED, type="task-sent", reason="broker_queue_full") == 1
    assert total(text, DROPPED) == 5
