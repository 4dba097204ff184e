"""Every hook takes effect in real workers: prefork with recycling children, solo, threads.

The version matrix runs this on the floor and newest dependencies: a release that breaks a
hook turns this red, not a dashboard empty."""

from __future__ import annotations

import pytest

from otel_celery_metrics.core import metric_table as mt
from tests.integration.mixed_batch import EXECUTED, TOTAL_TERMINAL, send_mixed_batch
from tests.support import producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("pool", "extra"),
    [("prefork", ("--max-tasks-per-child", "2")), ("solo", ()), ("threads", ())],
    ids=["prefork-recycle2", "solo", "threads"],
)
def test_every_hook_is_active_in_every_pool(
    broker_url: str, queue: str, pool: str, extra: tuple[str, ...]
) -> None:
    # A periodic (console) reader next to Prometheus: prefork pool children must silence it.
    env = {"OTEL_METRICS_EXPORTER": "prometheus,console", "OTEL_METRIC_EXPORT_INTERVAL": "600000"}
    with running_worker(
        broker_url, queue, pool=pool, concurrency=2, extra_args=extra, env=env
    ) as worker:
        send_mixed_batch(producer(broker_url), queue)
        samples = wait_for(
            lambda: (s := worker.samples())
            and value(s, "celery_tasks_total") >= TOTAL_TERMINAL
            and value(s, "celery_task_runtime_seconds_count") >= EXECUTED
            and s,
            timeout=60, what="every task and its runtime",
        )
        log = worker.log_text()
    assert value(samples, "celery_task_runtime_seconds_count") == EXECUTED
    hooks = {
        dict(labels)["hook"]: v for (name, labels), v in samples.items()
        if name == "otel_celery_metrics_hook_inactive"
    }
    assert hooks == dict.fromkeys(mt.HOOKS, 0.0), log[-3000:]
    assert "hooks active: request_class, collection" in log
    assert "hook is inactive" not in log
