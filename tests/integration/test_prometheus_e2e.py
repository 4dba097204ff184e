"""A real Prometheus (Debian's 2.x and Prometheus 3) scrapes a real prefork worker directly.

The seed guide's Step 5, automated: through Prometheus' HTTP API, ``up{job="celery"}``
is 1, ``sum by (task_name) (rate(celery_tasks_total{state="SUCCESS"}[5m]))`` has a
positive rate for the tasks that ran, and the per-state totals are exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.servers import running_prometheus, scrape_config
from tests.support import producer, running_worker, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

RATE_QUERY = 'sum by (task_name) (rate(celery_tasks_total{state="SUCCESS"}[5m]))'


@pytest.mark.parametrize("version", ["2", "3"])
def test_prometheus_scrapes_the_worker_and_sees_task_rates(
    redis_url: str, queue: str, tmp_path: Path, version: str
) -> None:
    with running_worker(redis_url, queue, pool="prefork", concurrency=2) as worker:
        target = f"127.0.0.1:{worker.port}"
        with running_prometheus(tmp_path, version, [scrape_config("celery", target)]) as prom:
            app = producer(redis_url)

            def send(name: str, n: int) -> None:
                for i in range(n):
                    app.send_task(name, args=(i,), queue=queue, routing_key=queue)

            send("tests.ok", 5)
            wait_for(lambda: value(worker.samples(), "celery_tasks_total", state="SUCCESS") >= 5,
                     timeout=30, what="5 SUCCESS on the worker's /metrics")
            # Prometheus holds a first sample of the series ...
            wait_for(lambda: prom.query('celery_tasks_total{job="celery",state="SUCCESS"}'),
                     timeout=30, what="celery_tasks_total in Prometheus")
            # ... then more tasks run, so the rate over the window is positive.
            send("tests.ok", 5)
            send("tests.fail", 2)

            def positive_rate() -> list[dict[str, Any]]:
                result = prom.query(RATE_QUERY)
                return [r for r in result if float(r["value"][1]) > 0]

            totals_query = f'sum by (state) (celery_tasks_total{{queue="{queue}"}})'
            try:
                rates = wait_for(positive_rate, timeout=30, what=RATE_QUERY)
                totals = wait_for(
                    lambda: (t := prom.scalar_by(totals_query, "state")).get("FAILURE") == 2
                    and t.get("SUCCESS") == 10 and t,
                    timeout=30, what=lambda: f"{totals_query}: {prom.query(totals_query)}")
                up = wait_for(lambda: prom.query('up{job="celery"}'), timeout=10, what="up")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nprometheus log:\n{prom.log_tail()}") from None

    assert totals == {"SUCCESS": 10.0, "FAILURE": 2.0}
    assert [float(r["value"][1]) for r in up] == [1.0]
    assert up[0]["metric"]["instance"] == target
    assert {r["metric"]["task_name"] for r in rates} == {"tests.ok"}
