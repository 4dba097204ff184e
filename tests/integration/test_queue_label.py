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
from tests.support import running_worker, scrape, unique_queue, value, wait_for

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
