"""The other configuration paths: the console exporter, and setup_metrics() in code."""

from __future__ import annotations

import re

import pytest

from tests.support import free_port, producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration


def _last_tasks_total(log: str) -> list[int]:
    """Values of the celery.tasks points in the last console export that has them."""
    chunks = log.split('"name": "celery.tasks"')
    if len(chunks) < 2:
        return []
    last = chunks[-1].split('"name": ')[0]
    return [int(float(v)) for v in re.findall(r'"value": ([0-9.]+)', last)]


def test_console_exporter_prints_every_task_of_a_prefork_worker(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    env = {"OTEL_METRICS_EXPORTER": "console", "OTEL_METRIC_EXPORT_INTERVAL": "500"}
    with running_worker(redis_url, queue, pool="prefork", concurrency=2, env=env) as worker:
        for i in range(4):
            app.send_task("tests.ok", args=(i,), queue=queue)
        app.send_task("tests.fail", queue=queue)
        wait_for(lambda: sorted(_last_tasks_total(worker.log_text())) == [1, 4],
                 timeout=30, what="console export with SUCCESS 4 and FAILURE 1")


def test_setup_metrics_in_code_serves_every_task_of_a_prefork_worker(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    port = free_port()
    with running_worker(
        redis_url, queue, pool="prefork", concurrency=2, app="tests.apps.setup_app",
        instrument=False, extra_args=("--max-tasks-per-child", "2"),
        metrics_port=port, env={"TEST_METRICS_PORT": str(port)},
    ) as worker:
        for i in range(6):
            app.send_task("tests.ok", args=(i,), queue=queue)
        app.send_task("tests.fail", queue=queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and value(s, "celery_tasks_total") == 7 and s,
            timeout=30, what="7 tasks counted",
        )
        assert value(samples, "celery_tasks_total", state="SUCCESS", queue=queue) == 6
        assert value(samples, "celery_tasks_total", state="FAILURE", queue=queue) == 1
        assert value(samples, "celery_task_runtime_seconds_count") == 7
        assert value(samples, "target_info", service_name="tests-in-code") == 1
