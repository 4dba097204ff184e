"""The exporter against real RabbitMQ: events through kombu, depth by passive declare."""

from __future__ import annotations

import pytest
from kombu import Connection, Queue

from tests.exporter.integration.conftest import producer
from tests.exporter.support import promtool_check, total, value, wait_for

pytestmark = pytest.mark.integration


def test_exact_counts_queue_depth_and_consumers(
    rabbitmq_url, queue, start_exporter, start_worker
) -> None:
    idle = f"{queue}-idle"
    with Connection(rabbitmq_url) as conn:  # a queue nobody consumes, declared as Celery would
        Queue(idle, routing_key=idle, durable=True, queue_arguments={"x-max-priority": 10})(
            conn.channel()
        ).declare()
    exporter = start_exporter(rabbitmq_url, f"--queues={idle}")
    worker = start_worker(rabbitmq_url, queue)
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        40,
        "the worker's first heartbeat",
    )
    # task-sent is published after the task message, so a fast worker's events may come
    # first; their queue is then the worker's only queue, known once inspect answered.
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_workers", queue=queue) == 1,
        20,
        "the worker's queues from inspect",
    )
    app = producer(rabbitmq_url, task_queue_max_priority=10)  # as the workers declare them
    for i in range(4):
        app.send_task("exp.ok", args=[i], queue=queue)
    app.send_task("exp.fail", queue=queue)
    for _ in range(3):
        app.send_task("exp.ok", queue=idle)

    def settled() -> str | None:
        text = exporter.scrape()
        return (
            text
            if (
                value(text, "celery_task_succeeded_total", task_name="exp.ok", queue=queue) == 4
                and value(text, "celery_task_failed_total", task_name="exp.fail", queue=queue) == 1
            )
            else None
        )

    text = wait_for(settled, 45, "all task events")
    q = {"queue": queue}
    assert value(text, "celery_task_sent_total", task_name="exp.ok", **q) == 4
    assert value(text, "celery_task_received_total", task_name="exp.ok", **q) == 4
    assert value(text, "celery_task_started_total", task_name="exp.ok", **q) == 4
    assert value(text, "celery_tasks_total", task_name="exp.fail", state="FAILURE", **q) == 1
    assert total(text, "celery_task_succeeded_total", queue=idle) == 0
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_messages", queue=idle) == 3,
        20,
        "3 messages waiting in the idle queue",
    )
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_consumers", queue=queue) == 1,
        20,
        "the worker's consumer on its queue (discovered by inspect)",
    )
    text = exporter.scrape()
    assert value(text, "celery_queue_consumers", queue=idle) == 0
    assert value(text, "celery_queue_workers", queue=queue) == 1
    assert value(text, "celery_exporter_broker_connected") == 1
    promtool_check(text)
    with Connection(rabbitmq_url) as conn:
        conn.channel().queue_delete(idle)


def test_killed_worker_goes_to_zero_on_rabbitmq_too(
    rabbitmq_url, queue, start_exporter, start_worker
) -> None:
    exporter = start_exporter(rabbitmq_url)
    worker = start_worker(rabbitmq_url, queue, concurrency=1)
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        40,
        "worker up",
    )
    worker.kill()
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 0,
        20,
        "the killed worker to read 0",
    )
