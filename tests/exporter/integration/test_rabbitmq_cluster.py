"""A three-node RabbitMQ cluster with the task queue a quorum queue: the exporter and an
instrumented prefork worker on a failover URL (``amqp://a;amqp://b;amqp://c``) move to
another node when the first, which both are connected to, stops; the queue keeps its
majority, and every task sent from then on runs and is counted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import amqp
import pytest

from tests.exporter.integration import private_rabbitmq
from tests.exporter.integration.conftest import producer
from tests.exporter.integration.rabbitmq_cluster import RabbitMQCluster
from tests.exporter.support import total, value, wait_for
from tests.fault_matrix import record
from tests.support import Worker
from tests.support import value as sample_value

pytestmark = pytest.mark.integration

# What a user running quorum queues sets, on the worker and the producer alike: the queue
# the worker declares for -Q (a "missing" queue to Celery) is then a quorum queue too.
QUORUM = {"task_default_queue_type": "quorum", "task_create_missing_queue_type": "quorum"}


@pytest.fixture
def cluster() -> Iterator[RabbitMQCluster]:
    if not private_rabbitmq.available():
        pytest.fail(f"rabbitmq-server is not installed under {private_rabbitmq.SBIN} "
                    "(scripts/setup installs it)")
    nodes = RabbitMQCluster(3)
    try:
        nodes.start()
        yield nodes
    finally:
        nodes.cleanup()


def _declare_quorum(node: private_rabbitmq.PrivateRabbitMQ, queue: str) -> None:
    """The task queue as Celery declares it with ``QUORUM``, once the cluster has formed,
    so that it has a member on each of the three nodes."""
    conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest",
                           password="guest")  # noqa: S106 - RabbitMQ's local default
    conn.connect()
    try:
        conn.channel().queue_declare(queue, durable=True, auto_delete=False,
                                     arguments={"x-queue-type": "quorum"})
    finally:
        conn.close()


def _queue_type(node: private_rabbitmq.PrivateRabbitMQ, queue: str) -> str:
    for line in node.ctl("list_queues", "name", "type").splitlines():
        name, _, kind = line.partition("\t")
        if name == queue:
            return kind.strip()
    return "absent"


def test_exporter_and_worker_move_to_another_node_and_count_from_then_on(
    cluster: RabbitMQCluster, queue: str, start_exporter,
) -> None:
    first, second, third = cluster.nodes
    _declare_quorum(first, queue)
    assert _queue_type(third, queue) == "quorum"
    exporter = start_exporter(cluster.url, "--broker-heartbeat=4")
    worker = Worker(cluster.url, queue, events=True, concurrency=2,
                    env={"TEST_CELERY_CONF": json.dumps(QUORUM)})
    try:
        worker.wait_ready(60)
        wait_for(lambda: value(exporter.scrape(), "celery_worker_up") == 1, 30,
                 "the worker's first heartbeat")
        app = producer(third.url, **QUORUM)
        for i in range(5):
            app.send_task("tests.ok", args=[i], queue=queue)
        wait_for(lambda: total(exporter.scrape(), "celery_task_succeeded_total") == 5, 30,
                 "five tasks, exporter")
        assert f":{first.port}" in worker.log_text()  # both on the first node
        assert value(exporter.scrape(), "celery_exporter_broker_reconnects_total") == 0

        stopping_at = time.monotonic()
        first.stop()  # returns once the node is down
        stopped = time.monotonic() - stopping_at
        wait_for(lambda: exporter.get("/health")[0] == 200
                 and value(exporter.scrape(), "celery_exporter_broker_connected") == 1, 60,
                 lambda: f"the exporter on another node\n{exporter.log[-3000:]}")
        moved = time.monotonic() - stopping_at
        # The gap shows in the self-metrics: one reconnect.
        assert value(exporter.scrape(), "celery_exporter_broker_reconnects_total") == 1
        wait_for(lambda: any(f"Connected to amqp://guest:**@127.0.0.1:{node.port}"
                             in worker.log_text() for node in (second, third)), 60,
                 lambda: f"the worker on another node\n{worker.log_text()[-3000:]}")
        # Two of its three members left: the queue is still there, still a quorum queue.
        assert _queue_type(second, queue) == "quorum"

        for i in range(5):
            app.send_task("tests.ok", args=[i], queue=queue)
        wait_for(lambda: total(exporter.scrape(), "celery_task_succeeded_total") == 10, 60,
                 lambda: f"five tasks after the failover\n{exporter.log[-3000:]}")
        wait_for(lambda: sample_value(worker.samples(), "celery_tasks_total",
                                      state="SUCCESS") == 10, 30, "ten tasks, worker")
        app.close()
        print(f"rabbitmq cluster: the first node took {stopped:.1f}s to stop; the exporter "
              f"was connected to another {moved:.1f}s after the stop began")
        record("the node in use stops (`rabbitmqctl stop`), failover URL "
               "`amqp://a;amqp://b;amqp://c`, task queue a quorum queue",
               "exporter and worker → RabbitMQ cluster, three nodes", "at once",
               f"{moved:.1f} s after the stop began (the stop itself took {stopped:.1f} s)",
               "no task (the quorum queue keeps its majority); the events published between "
               "the stop and the exporter's new event queue on another node (the event queue "
               "is not durable and lived on the stopped node); one more "
               "`celery_exporter_broker_reconnects_total`")
    finally:
        worker.stop()
