"""The exporter watching a real ``celery worker -E`` whose clock is 10 minutes behind the
exporter's and the producer's (libfaketime, Debian package faketime, from scripts/setup).

What each series does (docs/exporter.md, Clocks and bad input): liveness uses the
exporter's clock at receipt, so the worker stays up; runtimes come from the worker's clock
alone, so they stay right; the queue waits from the producer's task-sent to the worker's
task-started would be 10 minutes negative, beyond the tolerance: refused and counted.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.exporter.integration.conftest import producer
from tests.exporter.support import promtool_check, samples, total, value, wait_for

pytestmark = pytest.mark.integration

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def test_a_worker_ten_minutes_behind_stays_up_keeps_its_runtimes_and_its_waits_are_refused(
    redis_url, queue, start_exporter, start_worker
) -> None:
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: scripts/setup installs Debian's faketime")
    exporter = start_exporter(redis_url)
    worker = start_worker(redis_url, queue, env={
        "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": "-600",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1",
    })
    wait_for(lambda: value(exporter.scrape(), "celery_queue_workers", queue=queue) == 1, 30,
             "the worker's heartbeat and queues")
    app = producer(redis_url)
    for i in range(3):
        app.send_task("exp.ok", args=[i], queue=queue)
    app.send_task("exp.fail", queue=queue)

    def settled() -> str | None:
        text = exporter.scrape()
        done = (total(text, "celery_task_succeeded_total", queue=queue) == 3
                and total(text, "celery_task_failed_total", queue=queue) == 1
                and value(text, "celery_exporter_measurements_dropped_total",
                          reason="implausible_time") == 4)
        return text if done else None

    text = wait_for(settled, 45, "every task event and four refused waits")
    # Heartbeats past the 4 s --worker-timeout: still up, by the exporter's clock.
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_events_received_total",
                           type="worker-heartbeat") >= 4, 30, "four heartbeats")
    assert value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1
    assert all(math.isfinite(v) for _, _, v in samples(text))
    assert total(text, "celery_tasks_total", queue=queue) == 4
    assert total(text, "celery_task_queue_wait_seconds_count", queue=queue) == 0
    ok = {"task_name": "exp.ok", "queue": queue, "state": "SUCCESS"}
    failed = {"task_name": "exp.fail", "queue": queue, "state": "FAILURE"}
    assert value(text, "celery_task_runtime_seconds_count", **ok) == 3
    assert value(text, "celery_task_runtime_seconds_sum", **ok) < 1.0
    assert value(text, "celery_task_runtime_seconds_count", **failed) == 1
    assert 0 <= value(text, "celery_task_runtime_seconds_sum", **failed) < 1.0
    assert value(text, "celery_exporter_measurements_dropped_total", reason="invalid_time") == 0
    refused = [line for line in exporter.log.splitlines() if "was not recorded" in line]
    assert len(refused) == 2, refused  # once per reason and task name
    promtool_check(text)
