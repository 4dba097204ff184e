"""The third way out: OTLP straight into Prometheus 3's own OTLP receiver, no Collector.

A prefork worker (``-c 2 --max-tasks-per-child 3``) exports with the settings
docs/collector.md gives for this path: cumulative temporality (the SDK default; Prometheus
stores what it receives), the metrics endpoint ``/api/v1/otlp/v1/metrics`` over
http/protobuf, and ``celery.worker.hostname`` promoted from the resource to a label. PromQL
gives the exact per-state counts under one ``job``/``instance`` across recycling.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.integration.mixed_batch import EXECUTED, EXPECTED_STATES, send_mixed_batch
from tests.otlp_receiver import otlp_env
from tests.servers import Prometheus, running_prometheus
from tests.support import producer, running_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

#: The Prometheus configuration docs/collector.md gives for OTLP ingestion.
OTLP_CONFIG = {"otlp": {"promote_resource_attributes": ["celery.worker.hostname"]}}


def _totals(prom: Prometheus, queue: str) -> dict[tuple[str, str], float]:
    result = prom.query(f'sum by (task_name, state) (celery_tasks_total{{queue="{queue}"}})')
    return {(r["metric"]["task_name"], r["metric"]["state"]): float(r["value"][1])
            for r in result}


def test_prefork_worker_exports_otlp_straight_into_prometheus_3(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    with running_prometheus(tmp_path, "3", extra_config=OTLP_CONFIG,
                            extra_args=["--web.enable-otlp-receiver"]) as prom:
        env = otlp_env(
            prom.url, "http/protobuf",
            OTEL_TRACES_EXPORTER="none",
            OTEL_EXPORTER_OTLP_METRICS_ENDPOINT=f"{prom.url}/api/v1/otlp/v1/metrics",
        )
        with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                            extra_args=("--max-tasks-per-child", "3"), env=env) as worker:
            send_mixed_batch(producer(redis_url), queue)
            expected = {key: float(n) for key, n in EXPECTED_STATES.items()}
            wait_for(lambda: _totals(prom, queue) == expected, timeout=60,
                     what=lambda: f"exact counts: {_totals(prom, queue)}\n{prom.log_tail()}")
            runtime = f'sum(celery_task_runtime_seconds_count{{queue="{queue}"}})'
            wait_for(lambda: prom.scalar_by(runtime, "") == {"": EXECUTED}, timeout=30,
                     what=runtime)
            assert "ForkPoolWorker-3" in worker.log_text(), "no pool child was recycled"
            series = prom.series(f'celery_tasks_total{{queue="{queue}"}}')
        node = worker.node.replace("%h", socket.gethostname())
        assert len(series) == len(EXPECTED_STATES), series
        assert {s["job"] for s in series} == {"tests-worker"}
        assert len({s["instance"] for s in series}) == 1
        assert {s["celery_worker_hostname"] for s in series} == {node}
