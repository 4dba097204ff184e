"""A two-node RabbitMQ cluster: the exporter and an instrumented prefork worker on a
failover URL (``amqp://a;amqp://b``) move to the second node when the first, which both
are connected to, stops, and count every task from then on."""

from __future__ import annotations

import time
from collections.abc import Iterator

import amqp
import pytest

from tests.exporter.integration import private_rabbitmq
from tests.exporter.integration.conftest import producer
from tests.exporter.integration.rabbitmq_cluster import RabbitMQCluster
from tests.exporter.support import total, value, wait_for
from tests.support import Worker
from tests.support import value as sample_value

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster() -> Iterator[RabbitMQCluster]:
    if not private_rabbitmq.available():
        pytest.fail(f"rabbitmq-server is not installed under {private_rabbitmq.SBIN} "
                    "(scripts/setup installs it)")
    nodes = RabbitMQCluster()
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()


def _declare_on(node: private_rabbitmq.PrivateRabbitMQ, queue: str) -> None:
    """The task queue as Celery declares it (durable, no arguments), but on ``node``: a
    classic queue lives where it was declared, and this one must outlive the first node."""
    conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest",
                           password="guest")  # noqa: S106 - RabbitMQ's local default
    conn.connect()
    try:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False)
    finally:
        conn.close()


def test_exporter_and_worker_move_to_the_other_node_and_count_from_then_on(
    cluster: RabbitMQCluster, queue: str, start_exporter,
) -> None:
    _declare_on(cluster.second, queue)
    exporter = start_exporter(cluster.url, "--broker-heartbeat=4")
    worker = Worker(cluster.url, queue, events=True, concurrency=2)
    try:
        worker.wait_ready(60)
        wait_for(lambda: value(exporter.scrape(), "celery_worker_up") == 1, 30,
                 "the worker's first heartbeat")
        app = producer(cluster.second.url)
        for i in range(5):
            app.send_task("tests.ok", args=[i], queue=queue)
        wait_for(lambda: total(exporter.scrape(), "celery_task_succeeded_total") == 5, 30,
                 "five tasks, exporter")
        assert f":{cluster.first.port}" in worker.log_text()  # both on the first node

        stopping_at = time.monotonic()
        cluster.first.stop()  # returns once the node is down
        stopped = time.monotonic() - stopping_at
        wait_for(lambda: exporter.get("/health")[0] == 200
                 and value(exporter.scrape(), "celery_exporter_broker_connected") == 1, 60,
                 lambda: f"the exporter on the second node\n{exporter.log[-3000:]}")
        moved = time.monotonic() - stopping_at
        # The gap shows in the self-metrics: one reconnect.
        assert value(exporter.scrape(), "celery_exporter_broker_reconnects_total") == 1
        wait_for(lambda: f"Connected to amqp://guest:**@127.0.0.1:{cluster.second.port}"
                 in worker.log_text(), 60, "the worker on the second node")

        for i in range(5):
            app.send_task("tests.ok", args=[i], queue=queue)
        wait_for(lambda: total(exporter.scrape(), "celery_task_succeeded_total") == 10, 60,
                 lambda: f"five tasks after the failover\n{exporter.log[-3000:]}")
        wait_for(lambda: sample_value(worker.samples(), "celery_tasks_total",
                                      state="SUCCESS") == 10, 30, "ten tasks, worker")
        app.close()
        print(f"rabbitmq cluster: the first node took {stopped:.1f}s to stop; the exporter "
              f"was connected to the second {moved:.1f}s after the stop began")
    finally:
        worker.stop()
