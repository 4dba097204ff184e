"""The exporter's own RabbitMQ event queue, on a private node the tests stop and start.

What RabbitMQ reports about the queue (``rabbitmqctl list_queues``), what it drops
when the queue is full (counted, to the event), and a broker restart mid-stream.
One node serves the module (it takes about 20 s to start here).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Callable, Iterator

import amqp
import pytest

from tests.exporter.integration import private_rabbitmq
from tests.exporter.integration.conftest import ExporterProc
from tests.exporter.support import total, value, wait_for

pytestmark = pytest.mark.integration

# Documented in docs/exporter.md ("RabbitMQ event queue"); the test sets its own values
# so a default that leaked in would show.
LIMITS = ("--event-queue-ttl=120", "--event-queue-expires=30", "--event-queue-max-length=500",
          "--event-queue-max-bytes=4000000")


@pytest.fixture(scope="module")
def node() -> Iterator[private_rabbitmq.PrivateRabbitMQ]:
    if not private_rabbitmq.available():
        pytest.fail(f"rabbitmq-server is not installed under {private_rabbitmq.SBIN} "
                    "(set RABBITMQ_SBIN)")
    rabbit = private_rabbitmq.PrivateRabbitMQ()
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.cleanup()


@pytest.fixture
def exporter(node: private_rabbitmq.PrivateRabbitMQ, procs) -> ExporterProc:
    proc = ExporterProc(node.url, *LIMITS)
    procs.append(proc)
    wait_for(lambda: value(proc.scrape(), "celery_exporter_broker_connected") == 1, 30,
             "the exporter to connect to the private node")
    return proc


def event_queue(proc: ExporterProc) -> str:
    found = wait_for(lambda: re.findall(r"reading events from queue (\S+)", proc.log), 20,
                     "the exporter to log its event queue")
    return str(found[-1])


def heartbeat(n: int) -> bytes:
    return json.dumps({"type": "worker-heartbeat", "hostname": f"celery@burst-{n % 5}",
                       "timestamp": 1.0, "active": 0, "processed": n, "freq": 2.0}).encode()


def task_batch(n: int) -> bytes:
    """A prefork worker's buffered task events: one ``task.multi`` message, a JSON list."""
    common = {"uuid": f"task-{n}", "hostname": "celery@burst", "timestamp": 1.0}
    return json.dumps([{"type": "task-received", "name": "burst.job", **common},
                       {"type": "task-started", **common},
                       {"type": "task-succeeded", "runtime": 0.1, **common}]).encode()


def publish(url: str, count: int, start: int = 0, batch_every: int = 0) -> int:
    """``count`` messages on the event exchange, as Celery's dispatcher sends them:
    heartbeats, and every ``batch_every``-th a ``task.multi`` batch of 3 task events.
    Returns the number of events published."""
    conn = amqp.Connection(url.split("@", 1)[1].rstrip("/"), userid="guest",
                           password="guest")  # noqa: S106 - RabbitMQ's local default
    conn.connect()
    events = 0
    try:
        channel = conn.channel()
        for n in range(start, start + count):
            batch = batch_every and n % batch_every == 0
            channel.basic_publish(
                amqp.Message(task_batch(n) if batch else heartbeat(n),
                             content_type="application/json", content_encoding="utf-8",
                             delivery_mode=1),
                exchange="celeryev", routing_key="task.multi" if batch else "worker.heartbeat")
            events += 3 if batch else 1
        channel.close()  # a round trip: everything published before it has arrived
    finally:
        conn.close()
    return events


def received(text: str) -> float:
    return total(text, "celery_exporter_events_received_total")


def scrape_when(proc: ExporterProc, condition: Callable[[str], bool], timeout: float,
                what: str) -> str:
    def check() -> str | None:
        text = proc.scrape()
        return text if condition(text) else None

    return wait_for(check, timeout, what)


def test_the_event_queue_has_the_limits_the_docs_list(node, exporter) -> None:
    name = event_queue(exporter)
    reported = node.ctl("list_queues", "name", "arguments", "durable", "auto_delete",
                        "--formatter=json")
    queues = {q["name"]: q for q in json.loads(reported)}
    assert name in queues, f"{name} not among {sorted(queues)}"
    ours = queues[name]
    arguments = {key: value for key, _type, value in ours["arguments"]}
    assert arguments == {
        "x-message-ttl": 120_000, "x-expires": 30_000, "x-max-length": 500,
        "x-max-length-bytes": 4_000_000, "x-overflow": "drop-head",
        "x-dead-letter-exchange": f"{name}.dlx",
    }
    assert (ours["durable"], ours["auto_delete"]) == (False, False)  # x-expires removes it
    assert f"{name}.dropped" in queues


def test_what_a_full_event_queue_drops_is_counted_to_the_event(node, exporter) -> None:
    # Stalled (SIGSTOP), the exporter reads nothing: RabbitMQ sends up to the prefetch
    # into the socket, keeps 500 in the queue and drops the oldest of the rest. Every
    # 4th message is a worker's task.multi batch of 3 events: each is counted.
    messages = 6000
    os.kill(exporter.proc.pid, signal.SIGSTOP)
    try:
        published = publish(node.url, messages, batch_every=4)
    finally:
        os.kill(exporter.proc.pid, signal.SIGCONT)
    assert published == 9000

    def settled() -> str | None:
        text = exporter.scrape()
        dropped = total(text, "celery_exporter_events_dropped_total",
                        reason="broker_queue_full")
        return text if received(text) + dropped == published else None

    text = wait_for(settled, 60, "every published event counted or counted as dropped")
    dropped = {kind: value(text, "celery_exporter_events_dropped_total", type=kind,
                           reason="broker_queue_full")
               for kind in ("worker-heartbeat", "task-received", "task-started",
                            "task-succeeded", "other")}
    # About prefetch (2000) + queue length (500) messages got through; the rest dropped.
    assert published / 2 <= total(text, "celery_exporter_events_dropped_total") < published
    assert dropped["other"] is None
    # Each dropped batch counts its three events, one per type.
    assert dropped["task-received"] == dropped["task-started"] == dropped["task-succeeded"]
    assert dropped["task-received"] and dropped["task-received"] > 500
    assert exporter.alive()


def test_a_broker_restart_mid_stream_is_seen_and_counts_resume(node, exporter) -> None:
    name = event_queue(exporter)
    publish(node.url, 200)
    wait_for(lambda: received(exporter.scrape()) == 200, 30, "the first 200 events")
    node.stop()
    scrape_when(exporter, lambda t: value(t, "celery_exporter_broker_connected") == 0, 30,
                "the exporter to see the broker gone")
    assert exporter.get("/health")[0] == 503
    node.start()
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_broker_connected") == 1, 60,
             "the exporter to reconnect")
    publish(node.url, 300, start=200)
    text = scrape_when(exporter, lambda t: received(t) == 500, 30,
                       "counts to resume after the restart")
    assert value(text, "celery_exporter_broker_reconnects_total") == 1
    assert exporter.get("/health")[0] == 200
    # The queue went with the broker (not durable) and was declared again, same limits.
    queues = {q["name"]: q for q in json.loads(
        node.ctl("list_queues", "name", "arguments", "--formatter=json"))}
    assert name in queues
    assert "reconnected to the broker" in exporter.log


def test_a_dropped_connection_neither_loses_nor_double_counts(node, exporter) -> None:
    # Stalled, the exporter has up to the prefetch delivered but unread; then RabbitMQ
    # drops every connection (as a network blip would). The queue outlives the
    # connection, RabbitMQ requeues what was not acknowledged, and the exporter,
    # which acknowledges each chunk before counting it, takes up the same queue.
    published = 3000
    os.kill(exporter.proc.pid, signal.SIGSTOP)
    try:
        publish(node.url, published)
        node.ctl("close_all_connections", "--global", "network blip (test)")
    finally:
        os.kill(exporter.proc.pid, signal.SIGCONT)
    name = event_queue(exporter)

    def drained() -> bool:
        rows = json.loads(node.ctl("list_queues", "name", "messages", "--formatter=json"))
        return any(q["name"] == name and q["messages"] == 0 for q in rows)

    scrape_when(exporter, lambda t: value(t, "celery_exporter_broker_reconnects_total") == 1,
                30, "the exporter to reconnect")
    wait_for(drained, 30, "the event queue to be empty (ready + unacknowledged)")
    for _ in range(2):  # and nothing more arrives: no message lost or counted twice
        text = exporter.scrape()
        dropped = total(text, "celery_exporter_events_dropped_total")  # the 500 limit
        assert received(text) + dropped == published
        assert received(text) > 500  # the unread prefetch came back and was counted


def test_a_clean_stop_leaves_no_queue_behind(node, procs) -> None:
    proc = ExporterProc(node.url, *LIMITS)
    procs.append(proc)
    mine = event_queue(proc)

    def queues() -> set[str]:
        return {row["name"] for row in json.loads(
            node.ctl("list_queues", "name", "--formatter=json"))}

    assert {mine, f"{mine}.dropped"} <= queues()
    proc.stop()  # SIGTERM: the clean stop
    assert proc.proc.returncode == 0
    # Gone at once, not event_queue_expires (30 s here) later.
    assert not {q for q in queues() if q.startswith(mine)}
    exchanges = node.ctl("list_exchanges", "name", "--formatter=json")
    assert f"{mine}.dlx" not in {row["name"] for row in json.loads(exchanges)}
