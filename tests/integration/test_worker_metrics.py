"""Real instrumented workers (opentelemetry-instrument celery worker) scraped over HTTP."""

from __future__ import annotations

import re

import pytest

from tests.integration.mixed_batch import (
    COUNTDOWNS,
    EXECUTED,
    EXPECTED_STATES,
    NO_BROADCAST_EXECUTED,
    NO_BROADCAST_STATES,
    RECEIVED,
    TOTAL_TERMINAL,
    send_mixed_batch,
)
from tests.support import Samples, producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration


def _all_terminal(samples: Samples) -> bool:
    return value(samples, "celery_tasks_total") >= TOTAL_TERMINAL


def assert_mixed_batch_exact(samples: Samples, queue: str) -> None:
    for (task, state), count in EXPECTED_STATES.items():
        got = value(samples, "celery_tasks_total", task_name=task, state=state, queue=queue)
        assert got == count, f"{task} {state}: {got} != {count}"
    assert value(samples, "celery_tasks_total") == TOTAL_TERMINAL
    assert value(samples, "celery_task_runtime_seconds_count") == EXECUTED
    assert value(samples, "celery_tasks_received_total", queue=queue) == RECEIVED
    assert value(samples, "celery_task_failures_total", exception_type="ValueError") == 3
    assert value(samples, "celery_task_failures_total", exception_type="Reject") == 2
    # Every execution measured its queue wait. The test producer is not instrumented, so
    # those waits count from when the worker received the message; the two retries were
    # published by the (instrumented) worker itself and count from their publish time.
    assert value(samples, "celery_task_queue_wait_seconds_count") == EXECUTED
    assert value(samples, "celery_task_queue_wait_seconds_count", wait_from="publish") == 2
    assert value(samples, "otel_celery_metrics_dropped_total") == 0


@pytest.mark.parametrize(
    ("pool", "concurrency", "extra"),
    [
        ("solo", 1, ()),
        ("threads", 4, ()),
        ("prefork", 2, ()),
        ("prefork", 4, ("--max-tasks-per-child", "3")),
        ("prefork", 1, ()),
        ("prefork", 1, ("--autoscale", "4,1")),
    ],
    ids=["solo", "threads", "prefork-c2", "prefork-c4-recycle3", "prefork-c1", "prefork-autoscale"],
)
def test_mixed_batch_counts_exactly_per_state(
    broker_url: str, queue: str, pool: str, concurrency: int, extra: tuple[str, ...]
) -> None:
    with running_worker(
        broker_url, queue, pool=pool, concurrency=concurrency, extra_args=extra
    ) as worker:
        send_mixed_batch(producer(broker_url), queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and _all_terminal(s) and s,
            timeout=60, what="all terminal states",
        )
        # Let late duplicates (if any) show up before asserting exact counts.
        wait_for(lambda: value(worker.samples(), "celery_task_runtime_seconds_count") >= EXECUTED,
                 timeout=10, what="runtime count")
        samples = worker.samples()
        assert_mixed_batch_exact(samples, queue)
        # Nothing unbounded became a label.
        text_labels = {k for (_n, labels), _v in samples.items() for k, _ in labels}
        assert not text_labels & {"task_id", "args", "kwargs", "hostname", "exception_message"}
        assert not any("boom" in v for (_n, labels), _v in samples.items() for _k, v in labels)


def test_mixed_batch_on_sqs_counts_exactly_per_state_under_recycling_prefork(
    sqs_url: str, queue: str
) -> None:
    """SQS carries no broadcasts (no revokes); countdown tasks add the ETA queue wait."""
    with running_worker(
        sqs_url, queue, pool="prefork", concurrency=2, extra_args=("--max-tasks-per-child", "3")
    ) as worker:
        send_mixed_batch(producer(sqs_url), queue, broadcasts=False)
        total = sum(NO_BROADCAST_STATES.values())
        wait_for(lambda: value(worker.samples(), "celery_task_runtime_seconds_count")
                 >= NO_BROADCAST_EXECUTED and value(worker.samples(), "celery_tasks_total")
                 >= total, timeout=60, what="all terminal states")
        samples = worker.samples()
        log = worker.log_text()
    for (task, state), count in NO_BROADCAST_STATES.items():
        got = value(samples, "celery_tasks_total", task_name=task, state=state, queue=queue)
        assert got == count, f"{task} {state}: {got} != {count}"
    assert value(samples, "celery_tasks_total") == total
    assert value(samples, "celery_task_runtime_seconds_count") == NO_BROADCAST_EXECUTED
    assert value(samples, "celery_tasks_received_total", queue=queue) == NO_BROADCAST_EXECUTED
    wait = "celery_task_queue_wait_seconds_count"
    assert value(samples, wait) == NO_BROADCAST_EXECUTED
    assert value(samples, wait, wait_from="publish") == 2  # the retries, sent by the worker
    assert value(samples, wait, wait_from="eta") == COUNTDOWNS
    assert value(samples, wait, wait_from="received") == NO_BROADCAST_EXECUTED - 2 - COUNTDOWNS
    assert value(samples, "celery_tasks_scheduled") == 0
    assert value(samples, "otel_celery_metrics_dropped_total") == 0
    assert len(set(re.findall(r"ForkPoolWorker-(\d+)", log))) > 2, "children did not recycle"
