"""The standalone exporter over OTLP, into real Prometheus servers, next to its /metrics.

One real ``celery worker -E`` (prefork, ``-c 2``) and three exporters reading its events,
each configured only with the standard ``OTEL_*`` variables and ``--static-label``:

- OTLP http/protobuf, beside its own /metrics, to the real Collector (tools/otelcol-celery,
  the shipped collector-config.yaml unchanged);
- OTLP grpc, alone (no /metrics), to the same Collector;
- OTLP http/protobuf straight into Prometheus 3's OTLP receiver.

Prometheus 2 and 3 scrape the Collector with the shipped scrape job. PromQL gives the exact
per-state counts for every path, and the series names are the ones the exporter's own
/metrics serves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.exporter.integration.conftest import ExporterProc, Proc, producer
from tests.exporter.support import samples, value
from tests.integration.test_collector_sidecar import shipped_collector_job
from tests.otlp_receiver import OtlpGrpcReceiver
from tests.servers import Collector, Prometheus, running_collector, running_prometheus
from tests.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

EXPECTED = {("exp.ok", "SUCCESS"): 5.0, ("exp.fail", "FAILURE"): 2.0,
            ("exp.retry", "RETRY"): 1.0, ("exp.retry", "SUCCESS"): 1.0}


def otlp_exporter_env(service: str, protocol: str, endpoint: str, outputs: str) -> dict[str, str]:
    env = {
        "OTEL_METRICS_EXPORTER": outputs,
        "OTEL_SERVICE_NAME": service,
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
    }
    key = "OTEL_EXPORTER_OTLP_ENDPOINT" if protocol == "grpc" else \
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    return {**env, key: endpoint}


def totals(prom: Prometheus, job: str, queue: str) -> dict[tuple[str, str], float]:
    result = prom.query(
        f'sum by (task_name, state) (celery_tasks_total{{job="{job}",queue="{queue}",'
        f'team="payments"}})')
    return {(r["metric"]["task_name"], r["metric"]["state"]): float(r["value"][1])
            for r in result}


def report(prom: Prometheus, job: str, queue: str, collector: Collector) -> str:
    everything = prom.query(f'{{job="{job}",__name__=~"celery_tasks_total|'
                            f'celery_exporter_events_.*"}}')
    return (f"exact counts from {job} in Prometheus {prom.version}: "
            f"{totals(prom, job, queue)}; all it has: {everything}\n{collector.log_tail()}")


def names_in(prom: Prometheus, job: str) -> set[str]:
    return {s["__name__"] for s in prom.series(f'{{job="{job}",__name__=~"celery_.*"}}')}


def names_report(prom: Prometheus, job: str, exporter: ExporterProc) -> str:
    pushed, scraped = names_in(prom, job), scraped_names(exporter)
    queues = prom.query('{__name__=~"celery_queue_.*"}')
    return (f"the scrape's series names from {job} in Prometheus {prom.version}: only scraped "
            f"{sorted(scraped - pushed)}, only pushed {sorted(pushed - scraped)}; "
            f"queue series in Prometheus: {queues}; scrape: {exporter.scrape()}")


def scraped_names(exporter: ExporterProc) -> set[str]:
    return {name for name, _, _ in samples(exporter.scrape()) if name.startswith("celery_")}


def test_exporter_pushes_otlp_through_the_collector_and_into_prometheus_3_exactly(
    redis_url: str, queue: str, procs: list[Proc], start_worker: Any, tmp_path: Path
) -> None:
    with OtlpGrpcReceiver() as traces, \
            running_collector(tmp_path / "otelcol", f"127.0.0.1:{traces.port}") as collector:
        job = shipped_collector_job(collector.prometheus_target)
        with running_prometheus(tmp_path / "p2", "2", [job]) as prom2, \
                running_prometheus(tmp_path / "p3", "3", [job],
                                   extra_args=["--web.enable-otlp-receiver"]) as prom3:
            paths = {
                "events-http": otlp_exporter_env("events-http", "http/protobuf",
                                                 f"{collector.http_endpoint}/v1/metrics",
                                                 "prometheus,otlp"),
                "events-grpc": otlp_exporter_env("events-grpc", "grpc",
                                                 collector.grpc_endpoint, "otlp"),
                "events-direct": otlp_exporter_env("events-direct", "http/protobuf",
                                                   f"{prom3.url}/api/v1/otlp/v1/metrics",
                                                   "otlp"),
            }
            exporters = {}
            for service, env in paths.items():
                exporters[service] = ExporterProc(redis_url, "--static-label=team=payments",
                                                  env=env)
                procs.append(exporters[service])
            http_exporter = exporters["events-http"]
            assert exporters["events-grpc"].get("/metrics")[0] == 404
            assert exporters["events-grpc"].get("/health")[0] in (200, 503)
            worker = start_worker(redis_url, queue)
            wait_for(lambda: value(http_exporter.scrape(), "celery_worker_up",
                                   hostname=worker.node, team="payments") == 1,
                     timeout=30, what="the worker's first heartbeat")
            # Worker events carry no queue; until task-sent (or, for a one-queue worker,
            # inspect) names it, they wait a grace period and then count under the default
            # queue. So every exporter must know the worker's queue before tasks go out:
            # seen in what each one pushed (two without /metrics).
            for service in paths:
                wait_for(lambda s=service: prom3.query(
                             f'celery_queue_workers{{job="{s}",queue="{queue}"}} == 1'),
                         timeout=40, what=f"{service} to know the worker's queue")
            app = producer(redis_url)
            for i in range(5):
                app.send_task("exp.ok", args=[i], queue=queue)
            for _ in range(2):
                app.send_task("exp.fail", queue=queue)
            app.send_task("exp.retry", queue=queue)

            checks = [(prom2, "events-http"), (prom2, "events-grpc"),
                      (prom3, "events-http"), (prom3, "events-grpc"), (prom3, "events-direct")]
            for prom, service in checks:
                wait_for(lambda p=prom, s=service: totals(p, s, queue) == EXPECTED, timeout=60,
                         what=lambda p=prom, s=service: report(p, s, queue, collector))
            # The same series names as the scrape, on every path, once the queue and
            # inspect probes have reported (their gauges appear then, on both sides).
            for prom, service in checks:
                wait_for(lambda p=prom, s=service: names_in(p, s) == scraped_names(http_exporter),
                         timeout=30, what=lambda p=prom, s=service: names_report(
                             p, s, http_exporter))
            for prom in (prom2, prom3):
                runtime = prom.query(
                    f'sum(celery_task_runtime_seconds_count{{job="events-grpc",'
                    f'queue="{queue}",task_name="exp.ok"}})')
                assert float(runtime[0]["value"][1]) == 5.0
            info = prom3.series('target_info{job="events-direct"}')
            assert {s.get("deployment_environment") for s in info} == {"test"}, info
