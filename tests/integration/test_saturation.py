"""Saturation and stuck tasks on a real prefork worker (-c 2): utilisation, the oldest
executing task's age, tasks past their soft time limit, ETA tasks held as scheduled."""

from __future__ import annotations

import pytest

from tests.support import CORE_BROKERS, Samples, producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration

AGE = "celery_tasks_executing_oldest_age_seconds"
PAST_SOFT = "celery_tasks_past_soft_time_limit"


def utilisation(s: Samples) -> float:
    processes = value(s, "celery_worker_pool_processes")
    return value(s, "celery_tasks_executing") / processes if processes else -1.0


@pytest.mark.parametrize("core_broker_url", CORE_BROKERS, indirect=True)
def test_two_long_tasks_fill_a_two_process_pool_and_show_as_stuck_until_they_end(
    core_broker_url: str, queue: str
) -> None:
    app = producer(core_broker_url)
    with running_worker(core_broker_url, queue, pool="prefork", concurrency=2) as worker:
        idle = wait_for(lambda: (s := worker.samples()) and
                        value(s, "celery_worker_pool_processes") == 2 and s,
                        timeout=20, what="pool size 2")
        assert value(idle, "celery_worker_pool_max_processes") == 2
        assert utilisation(idle) == 0
        # An ETA task waits in the worker for its time: scheduled, not reserved.
        app.send_task("tests.ok", args=(1,), queue=queue, countdown=600)
        held = wait_for(lambda: (s := worker.samples()) and
                        value(s, "celery_tasks_scheduled", task_name="tests.ok") == 1 and s,
                        timeout=20, what="the ETA task scheduled")
        assert value(held, "celery_tasks_reserved") == 0
        assert value(held, "celery_tasks_prefetched", task_name="tests.ok", queue=queue) == 1
        assert utilisation(held) == 0
        # Two long tasks: one sleeps, one runs through its 1 s soft time limit.
        app.send_task("tests.sleep", args=(8,), queue=queue)
        app.send_task("tests.overrun", args=(8,), queue=queue, soft_time_limit=1)
        full = wait_for(lambda: (s := worker.samples()) and utilisation(s) == 1.0
                        and value(s, PAST_SOFT, task_name="tests.overrun") == 1 and s,
                        timeout=20, what="both processes busy, one task past its soft limit")
        assert value(full, PAST_SOFT, task_name="tests.sleep") == 0
        first = value(full, AGE, task_name="tests.sleep", queue=queue)
        assert first > 0
        wait_for(lambda: value(worker.samples(), AGE, task_name="tests.sleep") >= first + 1,
                 timeout=10, what="the sleeping task's age growing")
        # Both end: zero everywhere, no stale age.
        done = wait_for(lambda: (s := worker.samples()) and
                        value(s, "celery_tasks_total", state="SUCCESS") == 2 and s,
                        timeout=30, what="both long tasks done")
        assert value(done, AGE) == 0
        assert value(done, PAST_SOFT) == 0
        assert utilisation(done) == 0
        assert value(done, "celery_tasks_scheduled", task_name="tests.ok") == 1


def test_an_autoscaling_worker_reports_its_maximum_and_current_pool(
    redis_url: str, queue: str
) -> None:
    with running_worker(redis_url, queue, pool="prefork", concurrency=1,
                        extra_args=("--autoscale=3,1",)) as worker:
        s = wait_for(lambda: (s := worker.samples()) and
                     value(s, "celery_worker_pool_max_processes") == 3 and s,
                     timeout=20, what="the autoscale maximum")
        assert 1 <= value(s, "celery_worker_pool_processes") <= 3
