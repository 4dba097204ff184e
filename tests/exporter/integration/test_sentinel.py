"""Redis Sentinel: the exporter and an instrumented prefork worker on ``sentinel://`` URLs
follow a failover (the primary SIGKILLed), and both count exactly what ran."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from tests.exporter.integration.conftest import ExporterProc, producer
from tests.exporter.support import total, value, wait_for
from tests.sentinel import MASTER_NAME, SentinelSet
from tests.support import Worker
from tests.support import value as sample_value

pytestmark = pytest.mark.integration


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    servers = SentinelSet()
    yield servers
    servers.stop()


def _succeeded(exporter: ExporterProc, queue: str) -> float:
    return total(exporter.scrape(), "celery_task_succeeded_total", queue=queue)


def _worker_succeeded(worker: Worker) -> float:
    return sample_value(worker.samples(), "celery_tasks_total", state="SUCCESS")


def test_exporter_and_worker_follow_a_failover_and_count_exactly(
    sentinel_set: SentinelSet, queue: str, start_exporter,
) -> None:
    idle = f"{queue}-idle"  # probed, never consumed: only the primary of the moment has it
    exporter = start_exporter(
        sentinel_set.url, f"--broker-transport-option=master_name={MASTER_NAME}",
        f"--queues={idle}", "--broker-heartbeat=3",
    )
    conf = json.dumps({"broker_transport_options": {"master_name": MASTER_NAME}})
    worker = Worker(sentinel_set.url, queue, events=True, concurrency=2,
                    env={"TEST_CELERY_CONF": conf})
    try:
        worker.wait_ready()
        wait_for(lambda: exporter.get("/health")[0] == 200, 30, "the exporter to connect")
        wait_for(lambda: value(exporter.scrape(), "celery_worker_up") == 1, 30,
                 "the worker's first heartbeat")
        app = producer(sentinel_set.url, broker_transport_options={"master_name": MASTER_NAME})
        for i in range(10):
            app.send_task("tests.ok", args=[i], queue=queue)
        wait_for(lambda: _succeeded(exporter, queue) == 10, 30, "ten tasks, exporter")
        assert _worker_succeeded(worker) == 10
        app.close()

        old = sentinel_set.primary_port
        sentinel_set.kill_primary()
        killed_at = time.monotonic()
        wait_for(lambda: sentinel_set.primary_now() == sentinel_set.replica_port, 30,
                 lambda: f"the sentinels to promote the replica\n{sentinel_set.logs()}")
        promoted = time.monotonic() - killed_at
        assert sentinel_set.primary_now() != old
        wait_for(lambda: exporter.get("/health")[0] == 200
                 and value(exporter.scrape(), "celery_exporter_broker_connected") == 1,
                 30, "the exporter on the new primary")
        followed = time.monotonic() - killed_at

        app = producer(sentinel_set.url, broker_transport_options={"master_name": MASTER_NAME})
        for i in range(10):
            app.send_task("tests.ok", args=[i], queue=queue)
        for _ in range(3):
            app.send_task("tests.ok", queue=idle)
        wait_for(lambda: _succeeded(exporter, queue) == 20, 60,
                 lambda: f"ten tasks after the failover, exporter\n{exporter.log[-3000:]}")
        wait_for(lambda: _worker_succeeded(worker) == 20, 30,
                 lambda: f"ten tasks after the failover, worker\n{worker.log_text()[-3000:]}")
        # The queue probe reads the new primary: the idle queue exists only there.
        wait_for(lambda: value(exporter.scrape(), "celery_queue_messages", queue=idle) == 3, 30,
                 "the queue probe on the new primary")
        direct = redis.Redis(port=sentinel_set.replica_port, socket_timeout=2)
        assert direct.llen(idle) == 3
        app.close()
        text = exporter.scrape()
        assert total(text, "celery_task_succeeded_total") == 20
        assert value(text, "celery_exporter_broker_reconnects_total") == 1
        assert "'master_name'" not in exporter.log
        print(f"sentinel failover: promoted after {promoted:.1f}s, exporter up again after "
              f"{followed:.1f}s")
    finally:
        worker.stop()
