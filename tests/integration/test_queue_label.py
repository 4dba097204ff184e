"""The ``queue`` label is the queue a message was consumed from (issue 16), never a
routing key: real brokers, real workers (prefork and solo), the routing styles of
Celery's routing guide, and the standalone exporter watching the same workload."""

from __future__ import annotations

import re

import pytest
from celery import Celery

from tests.apps.routing_app import configure, send_workload
from tests.exporter.integration.conftest import ExporterProc
from tests.exporter.support import total as exporter_total
from tests.exporter.support import value as exporter_value
from tests.sqs_server import ElasticMQ
from tests.support import (
    producer,
    running_worker,
    scrape,
    transport_options,
    unique_queue,
    value,
    wait_for,
)

pytestmark = pytest.mark.integration

# Every routing key the workload uses holds "user<n>"; queue names never do.
_ROUTING_KEY_VALUE = re.compile(r'="[^"]*(user\d|images\.)')


def _no_routing_keys(text: str) -> None:
    leaked = [line for line in text.splitlines() if _ROUTING_KEY_VALUE.search(line)]
    assert not leaked, "routing keys in labels:\n" + "\n".join(leaked[:10])


@pytest.mark.parametrize("pool", ["prefork", "solo"])
def test_queue_label_is_the_consumed_queue_for_every_routing_style(
    broker_url: str, pool: str
) -> None:
    prefix = unique_queue("rt")
    queues = [f"{prefix}-images", f"{prefix}-feeds"]
    if not broker_url.startswith("redis"):
        queues.append(f"{prefix}-big")
    exporter = ExporterProc(broker_url, "--task-allow=routing.*", "--max-queues=1000")
    try:
        with running_worker(
            broker_url, ",".join(queues), pool=pool, concurrency=2, events=True,
            app="tests.apps.routing_app", env={"ROUTING_TEST_PREFIX": prefix},
        ) as worker:
            # The exporter learns the worker's queues (and their bindings) from inspect.
            wait_for(
                lambda: exporter_value(exporter.scrape(), "celery_queue_workers",
                                       queue=queues[0]) == 1,
                30, 0.2, "the exporter to learn the worker's queues",
            )
            producer = Celery("rt-producer", broker=broker_url, set_as_current=False)
            configure(producer, prefix)
            expected = send_workload(producer, prefix, broker_url)
            producer.close()
            executions = sum(expected.values())
            samples = wait_for(
                lambda: (s := worker.samples())
                and value(s, "celery_tasks_total") >= executions and s,
                60, 0.3, "every task's outcome",
            )
            text = scrape(worker.port)
            exported = wait_for(
                lambda: (t := exporter.scrape())
                and exporter_total(t, "celery_task_succeeded_total") >= executions and t,
                30, 0.3, "the exporter to see every success",
            )
    finally:
        exporter.stop()

    # In-process: exact counts under the queue names, nothing else.
    for (task, queue), count in expected.items():
        for metric in ("celery_tasks_total", "celery_tasks_received_total"):
            got = value(samples, metric, task_name=task, queue=queue)
            assert got == count, f"{metric} {task} {queue}: {got} != {count}"
    assert value(samples, "celery_tasks_total") == executions
    assert value(samples, "celery_tasks_total", state="SUCCESS") == executions
    # The fanout task published from inside the worker, with per-user routing keys.
    assert value(samples, "celery_tasks_published_total", queue=f"{prefix}-images") == 3
    assert value(samples, "celery_tasks_published_total") == 3
    _no_routing_keys(text)

    # The exporter, from the events of the same workload: task-sent names the queue;
    # worker events (which carry none) wait for it when the worker has several queues.
    for (task, queue), count in expected.items():
        for metric in ("celery_task_sent_total", "celery_task_received_total",
                       "celery_task_succeeded_total"):
            got = exporter_total(exported, metric, task_name=task, queue=queue)
            assert got == count, (
                f"exporter {metric} {task} {queue}: {got} != {count}\n"
                + "\n".join(line for line in exported.splitlines() if "routing." in line)
            )
    _no_routing_keys(exported)


def test_on_sqs_the_queue_label_is_the_celery_queue_name_not_the_sqs_queue_name(
    sqs_url: str, elasticmq: ElasticMQ
) -> None:
    """kombu names the SQS queue ``queue_name_prefix`` + the Celery name with dots made
    dashes; the label stays the Celery name (what ``-Q`` and routing use)."""
    prefix = unique_queue("lbl")
    queues = {f"{prefix}.images": 3, f"{prefix}-feeds": 2}
    app = producer(sqs_url)
    with running_worker(sqs_url, ",".join(queues), pool="prefork", concurrency=2) as worker:
        for queue, count in queues.items():
            for i in range(count):
                app.send_task("tests.ok", args=(i,), queue=queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and value(s, "celery_tasks_total") == 5 and s,
            40, 0.3, "every task's outcome",
        )
    for queue, count in queues.items():
        assert value(samples, "celery_tasks_total", queue=queue, state="SUCCESS") == count
        assert value(samples, "celery_tasks_received_total", queue=queue) == count
    labels = {dict(lbls).get("queue") for (_n, lbls) in samples} - {None}
    assert labels == set(queues)
    # The SQS names, which the labels are not: the join a dashboard needs.
    name_prefix = transport_options().get("queue_name_prefix", "")
    sqs_names = {queue: (name_prefix + queue).replace(".", "-") for queue in queues}
    assert set(sqs_names.values()) <= set(elasticmq.queue_names())
    assert sqs_names[f"{prefix}.images"] != f"{prefix}.images"
