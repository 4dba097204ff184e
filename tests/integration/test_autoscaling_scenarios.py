"""The shipped autoscaling signal in the cases where queue length scales wrong, on a real
Redis, real prefork workers (in-process metrics and task events), the real exporter and a
real Prometheus 3 evaluating docs/deploy/celery-autoscaling-rules.yml every second.

Each scenario asserts the rules' value, the replicas KEDA would set from the shipped
ScaledObject's queries (ceil(value / threshold), activation, min 0, max 20), and, next to
them, what LLEN of the queue (KEDA's redis listLength trigger, 2 tasks per replica) gives.
The figures are printed (pytest -s) and quoted in docs/autoscaling.md.

The ETA scenario uses a countdown of 8 s instead of 60 s: the rule does not depend on the
delay (a task is "scheduled" until its ETA, then outstanding).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.integration.autoscaling import (
    Fleet,
    keda_replicas,
    keda_triggers,
    llen_replicas,
    running_fleet,
    scalar,
    signals,
)
from tests.support import RABBITMQ_URL, REDIS_URL, Worker, producer, unique_queue, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

CONCURRENCY = 2
MAX_REPLICAS = 20
QUEUES = {name: unique_queue(f"as-{name}") for name in
          ("priority", "hoard", "long", "eta", "idle")}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("autoscaling"), REDIS_URL,
                       list(QUEUES.values()), worker_ports=len(QUEUES)) as running:
        yield running


@contextlib.contextmanager
def worker(fleet: Fleet, name: str, **env: str) -> Iterator[Worker]:
    w = Worker(REDIS_URL, QUEUES[name], app="tests.apps.autoscale_app",
               concurrency=CONCURRENCY, events=True,
               metrics_port=fleet.ports[list(QUEUES).index(name)],
               env={"AUTOSCALE_RUNS_URL": REDIS_URL, "AUTOSCALE_RUNS_KEY": QUEUES[name],
                    **env})
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop(timeout=5)  # warm shutdown would wait for the long tasks: SIGKILL after 5 s


def sender() -> Any:
    app = producer(REDIS_URL)
    # task-sent events name the queue of the exporter's celery_tasks_executing.
    app.conf.task_send_sent_event = True
    return app


def llen(queue: str) -> int:
    return int(redis.Redis.from_url(REDIS_URL).llen(queue))


def replicas(fleet: Fleet, queue: str, current: int = 1) -> tuple[int, list[float | None]]:
    triggers = keda_triggers(queue, CONCURRENCY)
    values = [scalar(fleet.prometheus, t.query) for t in triggers]
    return keda_replicas(values, triggers, 0, MAX_REPLICAS, current), values


def report(name: str, fleet: Fleet, queue: str) -> dict[str, Any]:
    keda, values = replicas(fleet, queue)
    length = llen(queue)
    row = {**signals(fleet.prometheus, queue), "keda_values": values, "keda_replicas": keda,
           "llen": length, "llen_replicas": llen_replicas(length, CONCURRENCY, 0, MAX_REPLICAS)}
    print(f"\n[autoscaling scenario {name}] {row}")
    return row


def settle(fleet: Fleet, queue: str, **want: float) -> dict[str, float | None]:
    """Wait until the recorded signals of ``queue`` read ``want``."""
    def reached() -> dict[str, float | None] | None:
        now = signals(fleet.prometheus, queue)
        return now if all(now[k] == v for k, v in want.items()) else None
    return wait_for(reached, timeout=30, interval=0.5,
                    what=lambda: f"{want} for {queue}: {signals(fleet.prometheus, queue)}")


def test_priority_backlog_counts_every_priority_list(fleet: Fleet) -> None:
    """20 tasks sent with priorities 0-9 and no worker yet (scale from zero): LLEN reads only
    the priority-0 list."""
    queue = QUEUES["priority"]
    app = sender()
    for i in range(20):
        app.send_task("autoscale.work", args=(0.1,), queue=queue, routing_key=queue,
                      priority=i % 10)
    settle(fleet, queue, outstanding=20, idle=0)
    row = report("priority backlog", fleet, queue)
    assert row["keda_replicas"] == 10  # ceil(20 / 2 processes / 1 task per process)
    assert row["llen"] < 20 and row["llen_replicas"] < 10
    # And the workers it starts drain it all.
    with worker(fleet, "priority"):
        settle(fleet, queue, outstanding=0, idle=1)
    assert replicas(fleet, queue)[0] == 0


def test_hoarding_worker_keeps_its_prefetched_tasks_in_the_signal(fleet: Fleet) -> None:
    """acks_late, prefetch multiplier 8, long tasks: the worker takes all 16 messages (2
    executing, 14 reserved); the Redis list reads 0."""
    queue = QUEUES["hoard"]
    with worker(fleet, "hoard", AUTOSCALE_ACKS_LATE="1", AUTOSCALE_PREFETCH="8"):
        app = sender()
        for _ in range(16):
            app.send_task("autoscale.work", args=(30,), queue=queue, routing_key=queue)
        settle(fleet, queue, outstanding=16, capacity=CONCURRENCY, load=8)
        row = report("hoarding", fleet, queue)
        assert row["llen"] == 0 and row["llen_replicas"] == 0  # LLEN would scale to zero
        assert row["keda_replicas"] == 8
        # The exporter's own view: Redis' unacked hash holds all 16, the 2 it saw start
        # are left to celery_tasks_executing (events), so it too counts each task once.
        unacked = f'max(celery_queue_unacked{{queue="{queue}"}})'
        executing = 'sum(celery_tasks_executing{job="celery-exporter"})'
        def terms() -> tuple[float | None, float | None]:
            return scalar(fleet.prometheus, unacked), scalar(fleet.prometheus, executing)

        wait_for(lambda: terms() == (14, 2), timeout=20, what=lambda: f"{terms()}")


def test_long_tasks_with_an_empty_queue_keep_their_replica(fleet: Fleet) -> None:
    queue = QUEUES["long"]
    with worker(fleet, "long"):
        app = sender()
        for _ in range(CONCURRENCY):
            app.send_task("autoscale.work", args=(30,), queue=queue, routing_key=queue)
        settle(fleet, queue, outstanding=CONCURRENCY, load=1, idle=0)
        row = report("long tasks, empty queue", fleet, queue)
        assert row["llen"] == 0 and row["llen_replicas"] == 0  # LLEN: scale in the busy fleet
        assert row["keda_replicas"] == 1


def test_eta_tasks_count_only_once_due(fleet: Fleet) -> None:
    queue = QUEUES["eta"]
    with worker(fleet, "eta"):
        app = sender()
        sent = time.monotonic()
        for _ in range(3):
            app.send_task("autoscale.work", args=(6,), queue=queue, routing_key=queue,
                          countdown=8)
        settle(fleet, queue, outstanding=0, scheduled=3, idle=0)
        before = report("ETA ahead", fleet, queue)
        assert time.monotonic() - sent < 8, "the ETA passed before the check: machine too slow"
        # Not a scale-up (the outstanding trigger reads 0); not idle: one replica stays.
        assert before["keda_values"][0] == 0
        assert before["keda_replicas"] == 1
        due = settle(fleet, queue, outstanding=3, scheduled=0)
        assert time.monotonic() - sent >= 8
        after = report("ETA due", fleet, queue)
        assert after["keda_replicas"] == 2  # ceil(3 / 2)
        assert before["llen"] == after["llen"] == 0
        assert due["idle"] == 0


def test_idle_fleet_reads_idle_and_scales_to_zero(fleet: Fleet) -> None:
    queue = QUEUES["idle"]
    with worker(fleet, "idle"):
        settle(fleet, queue, outstanding=0, scheduled=0, capacity=CONCURRENCY, load=0, idle=1)
        row = report("idle fleet", fleet, queue)
        assert row["keda_replicas"] == 0 and row["llen_replicas"] == 0
        # Capacity comes from the worker itself (the exporter's inspect view is the fallback).
        assert scalar(fleet.prometheus,
                      f'sum(celery_worker_queue_processes{{queue="{queue}"}})') == CONCURRENCY


def test_hoarding_on_rabbitmq_is_counted_from_the_workers(tmp_path: Path) -> None:
    """The same hoarding on RabbitMQ: the queue's ready count (QueueLength) reads 0 while the
    worker holds 16 unacknowledged messages. The exporter cannot see those on RabbitMQ; the
    in-process terms can."""
    queue = unique_queue("as-hoard-amqp")
    with running_fleet(tmp_path, RABBITMQ_URL, [queue], worker_ports=1) as amqp:
        w = Worker(RABBITMQ_URL, queue, app="tests.apps.autoscale_app", concurrency=CONCURRENCY,
                   events=True, metrics_port=amqp.ports[0],
                   env={"AUTOSCALE_RUNS_URL": REDIS_URL, "AUTOSCALE_RUNS_KEY": queue,
                        "AUTOSCALE_ACKS_LATE": "1", "AUTOSCALE_PREFETCH": "8"})
        try:
            w.wait_ready()
            app = producer(RABBITMQ_URL)
            app.conf.task_send_sent_event = True
            for _ in range(16):
                app.send_task("autoscale.work", args=(30,), queue=queue, routing_key=queue)
            settle(amqp, queue, outstanding=16, capacity=CONCURRENCY, load=8)
            # The exporter's first passive declare may come after the worker declared it.
            ready_query = f'queue:celery_broker_ready:max{{queue="{queue}"}}'
            wait_for(lambda: scalar(amqp.prometheus, ready_query) == 0, timeout=20,
                     what="the exporter's ready count of the queue: 0")
            ready = 0
            keda, values = replicas(amqp, queue)
            print(f"\n[autoscaling scenario hoarding, RabbitMQ] outstanding 16, ready {ready}, "
                  f"keda {values} -> {keda}, QueueLength replicas "
                  f"{llen_replicas(int(ready or 0), CONCURRENCY, 0, MAX_REPLICAS)}")
            assert keda == 8
        finally:
            w.stop(timeout=5)
