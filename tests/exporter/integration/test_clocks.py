"""The exporter watching a real ``celery worker -E`` whose clock is 10 minutes behind the
exporter's and the producer's, or 5 minutes behind and then stepping back during a task
(libfaketime, Debian package faketime, from scripts/setup; the stepping clock reads its
offset from a file on every call).

What each series does (docs/exporter.md, Clocks and bad input): liveness uses the
exporter's clock at receipt, so the worker stays up; runtimes come from the worker's clock
alone, so they stay right; the queue waits from the producer's task-sent to the worker's
task-started would be 10 minutes negative, beyond the tolerance: refused and counted.
"""

from __future__ import annotations

import math
import time
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


def test_a_worker_five_minutes_behind_whose_clock_steps_mid_task_then_dies(
    redis_url, queue, start_exporter, start_worker, tmp_path
) -> None:
    """The issue's figure: a worker 5 min behind the exporter and the producer, whose clock
    then steps 10 min further back while two tasks run, and which is then killed (no
    worker-offline). Its waits lie within the default 300 s tolerance: clamped to 0. The
    success's runtime is Celery's monotonic ``runtime`` field: right. The failure's runtime
    is task-started to task-failed, both worker-stamped: negative across the step, refused.
    Liveness and forgetting go by the exporter's receipt clock, so heartbeats stamped 15 min
    in the past keep the worker up, and it goes down, then is forgotten, on the flags' time."""
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: scripts/setup installs Debian's faketime")
    offset = tmp_path / "faketime.rc"
    offset.write_text("-300\n")
    exporter = start_exporter(redis_url, "--worker-forget-after=8")
    worker = start_worker(redis_url, queue, env={
        "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1",
    })
    wait_for(lambda: value(exporter.scrape(), "celery_queue_workers", queue=queue) == 1, 30,
             "the worker's heartbeat and queues")
    app = producer(redis_url)
    nap = 3.0
    app.send_task("exp.nap", args=[nap], queue=queue)
    app.send_task("exp.nap", args=[nap, True], queue=queue)
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_events_received_total",
                           type="task-started") == 2, 30, "both naps started")
    offset.write_text("-900\n")

    def settled() -> str | None:
        text = exporter.scrape()
        done = (total(text, "celery_task_succeeded_total", queue=queue) == 1
                and total(text, "celery_task_failed_total", queue=queue) == 1)
        return text if done else None

    text = wait_for(settled, 30, "both naps finished")
    ok = {"task_name": "exp.nap", "queue": queue, "state": "SUCCESS"}
    assert value(text, "celery_task_runtime_seconds_count", **ok) == 1
    assert nap <= value(text, "celery_task_runtime_seconds_sum", **ok) < nap + 2
    failed = {"task_name": "exp.nap", "queue": queue, "state": "FAILURE"}
    assert (value(text, "celery_task_runtime_seconds_count", **failed) or 0) == 0
    assert value(text, "celery_exporter_measurements_dropped_total",
                 reason="implausible_time") == 1
    assert total(text, "celery_task_queue_wait_seconds_count", queue=queue) == 2
    assert total(text, "celery_task_queue_wait_seconds_sum", queue=queue) == 0
    assert total(text, "celery_tasks_total", queue=queue) == 2
    assert all(math.isfinite(v) for _, _, v in samples(text))
    promtool_check(text)

    beats = value(text, "celery_exporter_events_received_total", type="worker-heartbeat")
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_events_received_total",
                           type="worker-heartbeat") >= beats + 2, 30, "two heartbeats after")
    assert value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1
    worker.kill()
    killed = time.monotonic()
    wait_for(lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 0,
             15, "the killed worker down")
    down = time.monotonic() - killed
    wait_for(lambda: f'hostname="{worker.node}"' not in exporter.scrape(), 20,
             "the killed worker forgotten")
    forgotten = time.monotonic() - killed
    # Heartbeats come every 2 s: the last one arrived at most ~2 s before the kill. Had the
    # exporter trusted their 15-minute-old timestamps, both would be immediate.
    assert 1.0 < down < 4 + 3, down
    assert 5.0 < forgotten < 8 + 5, forgotten
    assert f"worker {worker.node} forgotten" in exporter.log
