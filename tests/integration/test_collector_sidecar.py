"""The Collector sidecar path end to end, with real parts only.

A prefork worker (``-c 2 --max-tasks-per-child 3``) under ``opentelemetry-instrument``
exports OTLP (HTTP and gRPC) to the real Collector (tools/otelcol-celery) running the shipped
collector-config.yaml unchanged; Debian's Prometheus 2 and Prometheus 3 both scrape it with
the shipped docs/deploy/prometheus-collector.yml; PromQL through their HTTP APIs gives exact
per-state counts, one series per worker across recycling and the runtime histogram; traces
leave through the Collector's traces pipeline to an OTLP sink.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.mixed_batch import EXECUTED, EXPECTED_STATES, send_mixed_batch
from tests.otlp_receiver import OtlpGrpcReceiver, otlp_env
from tests.servers import Collector, Prometheus, running_collector, running_prometheus
from tests.support import REPO, producer, running_worker, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

SHIPPED_SCRAPE_CONFIG = REPO / "docs" / "deploy" / "prometheus-collector.yml"


def shipped_collector_job(target: str) -> dict[str, Any]:
    """The shipped scrape job, pointed at the test's Collector and scraped every second."""
    (job,) = yaml.safe_load(SHIPPED_SCRAPE_CONFIG.read_text())["scrape_configs"]
    assert job["honor_labels"] is True
    return {**job, "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{"targets": [target]}]}


def _totals(prom: Prometheus, queue: str) -> dict[tuple[str, str], float]:
    result = prom.query(f'sum by (task_name, state) (celery_tasks_total{{queue="{queue}"}})')
    return {(r["metric"]["task_name"], r["metric"]["state"]): float(r["value"][1])
            for r in result}


def _runtime_count(prom: Prometheus, queue: str) -> float:
    result = prom.query(f'sum(celery_task_runtime_seconds_count{{queue="{queue}"}})')
    return float(result[0]["value"][1]) if result else 0.0


def _wait_exact(prom: Prometheus, queue: str, collector: Collector) -> None:
    expected = {key: float(n) for key, n in EXPECTED_STATES.items()}
    wait_for(lambda: _totals(prom, queue) == expected, timeout=60,
             what=lambda: (f"exact counts in Prometheus {prom.version}: "
                           f"{_totals(prom, queue)}\n{collector.log_tail()}"))
    wait_for(lambda: _runtime_count(prom, queue) == EXECUTED, timeout=30,
             what=f"runtime histogram count in Prometheus {prom.version}")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_prefork_worker_through_the_real_collector_into_prometheus_2_and_3(
    redis_url: str, queue: str, tmp_path: Path, protocol: str
) -> None:
    with OtlpGrpcReceiver() as sink, \
            running_collector(tmp_path / "otelcol", f"127.0.0.1:{sink.port}") as collector:
        endpoint = collector.grpc_endpoint if protocol == "grpc" else collector.http_endpoint
        job = shipped_collector_job(collector.prometheus_target)
        with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                            extra_args=("--max-tasks-per-child", "3"),
                            env=otlp_env(endpoint, protocol)) as worker, \
                running_prometheus(tmp_path / "p2", "2", [job]) as prom2, \
                running_prometheus(tmp_path / "p3", "3", [job]) as prom3:
            send_mixed_batch(producer(redis_url), queue)
            for prom in (prom2, prom3):
                _wait_exact(prom, queue, collector)
            run_spans = wait_for(
                lambda: [s for s in sink.received.spans() if s.name.startswith("run/")],
                timeout=30, what="task spans through the Collector's traces pipeline")
            log = worker.log_text()
            assert "ForkPoolWorker-3" in log, "no pool child was recycled"
            node = worker.node.replace("%h", socket.gethostname())
            span_instances = {s.resource_attr("service.instance.id") for s in run_spans}
            assert len(span_instances) == 1, span_instances
            le_values = []
            for prom in (prom2, prom3):
                series = prom.series(f'celery_tasks_total{{queue="{queue}"}}')
                # One series per (task, state): the worker kept one identity while its
                # pool children were recycled, so nothing churned.
                assert len(series) == len(EXPECTED_STATES), series
                assert {s["instance"] for s in series} == span_instances
                assert {s["job"] for s in series} == {"tests-worker"}
                assert {s["celery_worker_hostname"] for s in series} == {node}
                buckets = prom.series(f'celery_task_runtime_seconds_bucket{{queue="{queue}"}}')
                le_values.append({s["le"] for s in buckets})
            # Prometheus 3 normalises `le` at ingestion ("1" -> "1.0"); ours are floats
            # already, so both versions store the same bucket labels.
            assert le_values[0] == le_values[1]
            assert {"+Inf", "1.0"} < le_values[0]
