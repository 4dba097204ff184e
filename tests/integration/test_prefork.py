"""Prefork specifics: lost children, recycling, and what the main process counts."""

from __future__ import annotations

import os
import signal

import pytest

from tests.support import Samples, producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration


def _executing(samples: Samples, task: str) -> float:
    return value(samples, "celery_tasks_executing", task_name=task)


def test_child_killed_mid_task_counts_one_worker_lost_failure_and_loses_nothing_else(
    broker_url: str, queue: str
) -> None:
    app = producer(broker_url)
    with running_worker(broker_url, queue, pool="prefork", concurrency=2) as worker:
        for i in range(5):
            app.send_task("tests.ok", args=(i,), queue=queue)
        wait_for(lambda: value(worker.samples(), "celery_tasks_total", state="SUCCESS") == 5,
                 timeout=30, what="first wave")
        app.send_task("tests.sleep", args=(60,), queue=queue)
        # The executing gauge comes from the main process' view of the pool.
        wait_for(lambda: _executing(worker.samples(), "tests.sleep") == 1,
                 timeout=30, what="sleep task executing")
        for pid in worker.child_pids():
            os.kill(pid, signal.SIGKILL)
        samples = wait_for(
            lambda: (s := worker.samples())
            and value(s, "celery_tasks_total", task_name="tests.sleep", state="FAILURE") == 1
            and s,
            timeout=30, what="WorkerLostError failure",
        )
        assert value(samples, "celery_task_failures_total", task_name="tests.sleep",
                     exception_type="WorkerLostError") == 1
        assert _executing(samples, "tests.sleep") == 0
        # New children take over; their tasks and the first wave are all there.
        for i in range(5):
            app.send_task("tests.ok", args=(i,), queue=queue)
        samples = wait_for(
            lambda: (s := worker.samples())
            and value(s, "celery_tasks_total", state="SUCCESS") == 10 and s,
            timeout=30, what="second wave",
        )
        assert value(samples, "celery_tasks_total") == 11
        # The killed task never finished: no runtime point for it.
        assert value(samples, "celery_task_runtime_seconds_count") == 10
        assert value(samples, "celery_tasks_received_total") == 11


def test_a_task_that_kills_its_own_process_is_a_worker_lost_failure(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    with running_worker(redis_url, queue, pool="prefork", concurrency=2) as worker:
        app.send_task("tests.die", queue=queue)
        app.send_task("tests.ok", args=(1,), queue=queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and value(s, "celery_tasks_total") == 2 and s,
            timeout=30, what="both tasks terminal",
        )
        assert value(samples, "celery_tasks_total", task_name="tests.die", state="FAILURE") == 1
        assert value(samples, "celery_task_failures_total",
                     exception_type="WorkerLostError") == 1
        assert value(samples, "celery_tasks_total", task_name="tests.ok", state="SUCCESS") == 1


def test_counters_never_go_backwards_while_children_recycle_every_task(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    seen: list[float] = []
    with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                        extra_args=("--max-tasks-per-child", "1")) as worker:
        for wave in range(1, 5):
            for i in range(5):
                app.send_task("tests.ok", args=(i,), queue=queue)

            def total() -> float:
                current = value(worker.samples(), "celery_tasks_total", state="SUCCESS")
                seen.append(current)
                return current

            wait_for(lambda w=wave: total() == 5 * w, timeout=60, what=f"wave {wave}")
        assert seen == sorted(seen), "a counter went backwards across child recycling"
        samples = worker.samples()
        assert value(samples, "celery_task_runtime_seconds_count") == 20
        assert value(samples, "celery_tasks_received_total") == 20


def test_hard_time_limit_and_unregistered_tasks_are_counted_from_the_main_process(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    with running_worker(redis_url, queue, pool="prefork", concurrency=2) as worker:
        app.send_task("tests.sleep", args=(30,), queue=queue, time_limit=1)
        app.send_task("tests.not_registered", queue=queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and value(s, "celery_tasks_total") == 2 and s,
            timeout=40, what="time limit and unknown task counted",
        )
        assert value(samples, "celery_tasks_total", task_name="tests.sleep",
                     state="FAILURE") == 1
        assert value(samples, "celery_task_failures_total", task_name="tests.sleep",
                     exception_type="TimeLimitExceeded") == 1
        assert value(samples, "celery_tasks_total", task_name="tests.not_registered",
                     state="REJECTED") == 1
