"""The Collector down or slow: tasks are unaffected, logs stay per export, metrics resume.

What bounds memory while the Collector is away: metrics are cumulative, so the SDK keeps
one aggregate per series and drops a failed export instead of queueing it; the next
successful export carries the full totals. These tests check exactly that from outside:
after the outage the first export already holds every count, and no backlog of queued
exports arrives.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.otlp_receiver import OtlpHttpReceiver, otlp_env
from tests.support import Worker, free_port, producer, running_worker, wait_for

pytestmark = pytest.mark.integration

TASKS = "celery.tasks"
INTERVAL_MS = 500
# Log lines the SDK's OTLP exporters write when an export fails (the retry warnings and
# the final error), for metrics from the worker's main process.
METRICS_EXPORT_FAILURE = re.compile(r"MainProcess\].*(/v1/metrics|metrics batch)")
FINAL_METRICS_ERROR = re.compile(r"ERROR/MainProcess\] Failed to export metrics batch")
ANY_EXPORT_FAILURE = re.compile(r"Failed to export|Transient error")


def _succeeded(worker: Worker) -> int:
    return worker.log_text().count(" succeeded in ")


def _lines(worker: Worker, pattern: re.Pattern[str]) -> list[str]:
    return [line for line in worker.log_text().splitlines() if pattern.search(line)]


def _env(endpoint: str) -> dict[str, str]:
    # A 2 s export timeout: one attempt, one retry after ~1 s, then the export is given
    # up until the next interval. Spans keep the SDK's default 5 s batch delay.
    return otlp_env(endpoint, interval_ms=INTERVAL_MS, OTEL_EXPORTER_OTLP_TIMEOUT="2",
                    OTEL_BSP_SCHEDULE_DELAY="5000")


def test_collector_down_then_back_tasks_run_logs_per_export_and_totals_resume(
    redis_url: str, queue: str
) -> None:
    port = free_port()  # nothing listens here yet: the Collector is down
    n_tasks = 120
    with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                        env=_env(f"http://127.0.0.1:{port}")) as worker:
        app = producer(redis_url)
        started = time.monotonic()
        for i in range(n_tasks):
            app.send_task("tests.ok", args=(i,), queue=queue)
        wait_for(lambda: _succeeded(worker) >= n_tasks, timeout=30,
                 what="every task succeeds with the Collector down")
        # Several export rounds fail while the tasks have long finished.
        wait_for(lambda: len(_lines(worker, FINAL_METRICS_ERROR)) >= 3, timeout=30,
                 what="three failed metric exports")
        outage = time.monotonic() - started
        failures = _lines(worker, FINAL_METRICS_ERROR)
        metric_lines = _lines(worker, METRICS_EXPORT_FAILURE)
        # Per export, not per task: at most one export per interval, each logging its
        # retry warning and its final error; 120 tasks add nothing.
        assert len(failures) <= outage / (INTERVAL_MS / 1000) + 1
        assert len(metric_lines) <= 2 * len(failures) + 2, metric_lines
        assert len(_lines(worker, ANY_EXPORT_FAILURE)) < n_tasks / 4

        with OtlpHttpReceiver(port=port) as rx:  # the Collector is back, same address
            back = time.monotonic()
            wait_for(lambda: rx.received.total(TASKS) >= n_tasks, timeout=20,
                     what="metrics resume after the outage")
            first = rx.received.points(TASKS)
            first_request = min(p.request for p in first)
            # The first export after the outage already holds every count: nothing was
            # lost, nothing had to be replayed.
            assert sum(p.value for p in first if p.request == first_request) == n_tasks
            assert rx.received.total(TASKS, task_name="tests.ok", state="SUCCESS") == n_tasks
            # No backlog of queued exports: requests arrive at the export interval's pace.
            wait_for(lambda: rx.received.metric_request_count() >= 3, timeout=10,
                     what="a few regular exports")
            elapsed = time.monotonic() - back
            assert rx.received.metric_request_count() <= elapsed / (INTERVAL_MS / 1000) + 2


def test_slow_collector_does_not_slow_tasks_and_metrics_resume(
    redis_url: str, queue: str
) -> None:
    n_tasks = 60
    with OtlpHttpReceiver() as rx:
        rx.delay = 4.0  # every export times out (2 s) before the Collector answers
        with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                            env=_env(rx.endpoint)) as worker:
            wait_for(lambda: len(_lines(worker, FINAL_METRICS_ERROR)) >= 1, timeout=30,
                     what="an export timed out")
            app = producer(redis_url)
            started = time.monotonic()
            for i in range(n_tasks):
                app.send_task("tests.ok", args=(i,), queue=queue)
            # Exports hang for seconds; the tasks do not wait for them.
            wait_for(lambda: _succeeded(worker) >= n_tasks, timeout=15,
                     what="every task succeeds while exports hang")
            assert time.monotonic() - started < 10
            assert rx.received.total(TASKS) == 0, "a timed-out export was counted"
            rx.delay = 0.0
            wait_for(lambda: rx.received.total(TASKS) >= n_tasks, timeout=20,
                     what="metrics resume once the Collector is fast again")
            assert rx.received.total(TASKS, task_name="tests.ok", state="SUCCESS") == n_tasks
