"""The operator kit on real data: every dashboard query and every rule expression, run through
the HTTP API of a real Prometheus 2 and a real Prometheus 3 that load docs/deploy's rule files
and scrape (a) a real instrumented prefork worker, directly and through the real Collector
(the same worker exports both ways), and (b) the standalone exporter reading the same
worker's events, after one workload with successes, failures, retries, revokes, ETA tasks
and a backlog; then the worker is killed and the worker-down condition must hold.

No query may error; every query that should have data has it, per mode (each mode is a job:
``celery``, ``tests-worker`` and ``celery-exporter``); the few that are empty on purpose are
listed below with the reason, and asserted empty. One workload, both servers, many queries.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.exporter.integration.conftest import ExporterProc
from tests.exporter.support import total
from tests.integration.mixed_batch import send_mixed_batch
from tests.integration.test_collector_sidecar import shipped_collector_job
from tests.servers import Prometheus, running_collector, running_prometheus, scrape_config
from tests.support import producer, running_worker, value, wait_for
from tests.unit.test_operator_kit import RULE_FILES, load_build

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

#: The three ways out, each a job in Prometheus: the worker's /metrics scraped directly; the
#: same worker's OTLP through the real Collector (scraped with the shipped honor_labels job,
#: so job = service.name); the standalone exporter reading the worker's events.
JOBS = {"inprocess": "celery", "collector": "tests-worker", "exporter": "celery-exporter"}
IN = ("inprocess", "collector")
BOTH = (*IN, "exporter")
EXPORTER = ("exporter",)
#: Grafana's built-ins, as a dashboard at "last 15 minutes" with a 1s scrape would set them.
RATE_INTERVAL, RANGE = "2m", "10m"

#: Rule (record or alert name) -> the modes whose job the expression's result holds now.
#: Alert conditions are empty on this healthy fleet, each for the reason given.
RULE_EXPECT: dict[str, tuple[str, ...]] = {
    "job_queue_task_name_state:celery_tasks:rate5m": BOTH,
    "job_queue_task_name:celery_tasks_finished:rate5m": BOTH,
    "job_queue_task_name:celery_task_failures:ratio_rate5m": BOTH,
    "job_queue_task_name:celery_task_runtime_seconds:quantile_rate5m": BOTH,
    "job_queue:celery_task_queue_wait_seconds:quantile_rate5m": BOTH,
    "job_queue_task_name:celery_task_queue_wait_seconds:quantile_rate5m": BOTH,
    "job_instance:celery_tasks:rate5m": BOTH,
    "job_instance:celery_tasks_held:sum": BOTH,
    "job_instance:celery_worker_saturation:ratio": IN,  # celery_worker_pool_processes
    "job_hostname:celery_worker_saturation:ratio": EXPORTER,  # pool size comes from inspect
    # tests.fail fails 3 of 3 runs (ratio 1), under the guard of 10 runs in 5 minutes.
    "CeleryTaskFailureRatioHigh": (),
    "CeleryQueueWaitHigh": (),  # waits are seconds, the threshold is 60 s
    "CeleryQueueBacklogGrowing": (),  # the queue was empty minutes ago
    "CeleryFleetStalled": (),  # messages wait, but tasks end
    "CeleryQueueOldestMessageOld": (),  # the oldest message waits seconds, not 10 minutes
    "CeleryWorkerDown": (),
    "CeleryWorkerMetricsGone": (),
    # The backlog keeps both pool processes busy with more tasks waiting: the condition holds
    # now in both modes (the alert needs it for 15 minutes).
    "CeleryWorkerSaturated": BOTH,
    "CeleryTaskEventsDisabled": (),  # the worker runs with -E
    "CeleryMetricsPipelineLosingData": (),  # nothing dropped, nothing overflowed
    "CeleryInstrumentationDegraded": (),  # every hook active (or the series not there yet)
    "CeleryTaskStuck": (),  # the longest task runs 3 s and none has a soft time limit
}

#: The per-task dashboard runs for these tasks; the overview for all (".*").
TASK_VIEW_TASKS = ("tests.fail", "tests.sleep")
#: (dashboard file, task, panel title, legend, mode) of queries that are empty in this
#: workload although the mode fills them elsewhere, and why.
EMPTY_ON_PURPOSE: dict[tuple[str, str, str, str, str], str] = {
    ("celery-overview.json", ".*", "Scrape targets up", "{{instance}}", "collector"):
        "Prometheus scrapes the Collector: its up has the Collector's job, not service.name",
    **{("celery-task.json", task, "Published, received, finished per second", "published",
        mode): "the test's producer is not instrumented (and neither task retries)"
       for task in TASK_VIEW_TASKS for mode in IN},
    **{("celery-task.json", "tests.sleep", "Failures per second by exception",
        "{{exception_type}}", mode): "tests.sleep never fails" for mode in BOTH},
}

#: Not asserted either way: whether a collection happened to see tests.fail (it runs for
#: microseconds) executing or prefetched is timing. tests.sleep proves the panel.
TIMING_DEPENDENT = {
    ("celery-task.json", "tests.fail", "Executing and waiting in workers", legend, mode)
    for legend in ("executing", "prefetched") for mode in IN
}


def rule_expressions() -> dict[str, str]:
    out: dict[str, str] = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                # The three quantiles of a recording rule share its name: query all three.
                out[name] = f"{out[name]} or {rule['expr']}" if name in out else rule["expr"]
    return out


def substitute(expr: str, job: str, queue: str, task: str) -> str:
    for var, val in (("$__rate_interval", RATE_INTERVAL), ("$__range", RANGE), ("$job", job),
                     ("$queue", queue), ("$task", task)):
        expr = expr.replace(var, val)
    assert "$" not in expr, expr
    return expr


def query(prom: Prometheus, promql: str) -> list[dict[str, Any]]:
    body = json.loads(prom.get("/api/v1/query", query=promql))
    assert body["status"] == "success", (promql, body)
    return list(body["data"]["result"])


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(r["value"][1] not in ("NaN",) for r in result)


def test_every_dashboard_query_and_rule_expression_on_real_data(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    build = load_build()
    exporter = ExporterProc(redis_url)
    try:
        with contextlib.ExitStack() as stack:
            # No traces leave the worker; the Collector's traces exporter needs an address.
            collector = stack.enter_context(running_collector(tmp_path / "otelcol", "127.0.0.1:9"))
            otlp = {"OTEL_METRICS_EXPORTER": "prometheus,otlp",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": collector.http_endpoint,
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                    "OTEL_METRIC_EXPORT_INTERVAL": "500",
                    "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "celery_worker"}
            worker = stack.enter_context(running_worker(
                redis_url, queue, concurrency=2, extra_args=("-E",), heartbeat=True, env=otlp))
            scrapes = [scrape_config(JOBS["inprocess"], f"127.0.0.1:{worker.port}"),
                       shipped_collector_job(collector.prometheus_target),
                       scrape_config(JOBS["exporter"], f"127.0.0.1:{exporter.port}")]
            rule_files = {"rule_files": [str(p) for p in RULE_FILES]}
            servers = [stack.enter_context(running_prometheus(
                tmp_path / f"prom{v}", v, scrapes, extra_config=rule_files)) for v in ("2", "3")]
            _workload(worker, exporter, redis_url, queue, servers)
            failures: list[str] = []
            for prom in servers:
                failures += _check_rules(prom)
                failures += _check_dashboards(prom, build, queue)
                failures += _check_variables(prom, build, queue)
                failures += _check_values(prom, queue)
            # The one alert a healthy fleet cannot show: kill the worker, and the worker-down
            # condition holds on the real staleness of its series (scrape fails: up 0; the
            # exporter: no heartbeat within --worker-timeout).
            worker.stop(signal.SIGKILL)
            down = rule_expressions()["CeleryWorkerDown"]
            for prom in servers:
                wait_for(lambda p=prom: _modes_in(query(p, down)) == {"inprocess", "exporter"},
                         timeout=30, what=lambda p=prom: f"Prometheus {p.version}: "
                         f"{down} -> {query(p, down)}")
    finally:
        exporter.stop()
    assert not failures, "\n".join(failures)


def _workload(worker: Any, exporter: ExporterProc, redis_url: str, queue: str,
              servers: list[Prometheus]) -> None:
    wait_for(lambda: total(exporter.scrape(), "celery_worker_processes") == 2
             and total(exporter.scrape(), "celery_queue_workers", queue=queue) == 1,
             timeout=40, what="the exporter sees the worker (heartbeat, inspect)")
    app = producer(redis_url)
    app.conf.task_send_sent_event = True  # queue labels and publish-based waits for the exporter
    # rate() counts no increase for a series' first sample: Prometheus must see the series
    # of a failing task before the failures the queries are about.
    for name, args in (("tests.ok", ()), ("tests.fail", ()), ("tests.sleep", (0.2,))):
        app.send_task(name, args=args, queue=queue, routing_key=queue)
    seen = (f'count(celery_tasks_total{{queue="{queue}",state="FAILURE"}}) == {len(JOBS)}',
            f'count(celery_task_runtime_seconds_count{{task_name="tests.sleep"}}) == {len(JOBS)}')
    for prom in servers:
        for promql in seen:
            wait_for(lambda p=prom, q=promql: query(p, q), timeout=40,  # type: ignore[misc]
                     what=f"Prometheus {prom.version}: {promql}")
    send_mixed_batch(app, queue)
    for i in range(2):  # ETA tasks: their wait is measured from the ETA
        app.send_task("tests.ok", args=(200 + i,), queue=queue, routing_key=queue, countdown=2)
    # One not due before the test ends: held in the worker as scheduled, never reserved.
    app.send_task("tests.ok", args=(300,), queue=queue, routing_key=queue, countdown=3600)
    wait_for(lambda: value(worker.samples(), "celery_tasks_total", state="SUCCESS") >= 11,
             timeout=60, what="the mixed batch and the ETA tasks done")
    # A backlog: 2 pool processes, 10 tasks of 3 s. Messages wait in Redis, tasks wait
    # reserved in the worker, both processes are busy.
    for _ in range(10):
        app.send_task("tests.sleep", args=(3,), queue=queue, routing_key=queue)
    busy = (f'celery_queue_messages{{queue="{queue}"}} > 0',
            f'sum(celery_tasks_reserved{{queue="{queue}"}}) > 0',
            'job_hostname:celery_worker_saturation:ratio >= 1',
            'job_instance:celery_worker_saturation:ratio >= 1',
            *(f"count(sum by (job) (rate(celery_tasks_total{{{sel}}}[2m])) > 0) == {len(JOBS)}"
              for sel in ('state="FAILURE"', 'task_name="tests.sleep"')))
    for prom in servers:
        for promql in busy:
            wait_for(lambda p=prom, q=promql: query(p, q), timeout=40,  # type: ignore[misc]
                     what=lambda p=prom, q=promql: f"Prometheus {p.version}: {q}\n{p.log_tail()}")


def _modes_in(result: list[dict[str, Any]]) -> set[str]:
    jobs = {r["metric"].get("job") for r in result if r["value"][1] != "NaN"}
    return {mode for mode, job in JOBS.items() if job in jobs}


def _check_rules(prom: Prometheus) -> list[str]:
    failures = []
    exprs = rule_expressions()
    assert set(exprs) == set(RULE_EXPECT), set(exprs) ^ set(RULE_EXPECT)
    for name, expr in exprs.items():
        got = _modes_in(query(prom, expr))
        if got != set(RULE_EXPECT[name]):
            failures.append(f"Prometheus {prom.version} rule {name}: data for {sorted(got)}, "
                            f"expected {sorted(RULE_EXPECT[name])}: {query(prom, expr)}")
        if ":" in name:  # a recording rule: the series Prometheus recorded
            recorded = _modes_in(query(prom, name))
            if recorded != set(RULE_EXPECT[name]):
                failures.append(f"Prometheus {prom.version} recorded {name}: {sorted(recorded)}")
    return failures


def _check_dashboards(prom: Prometheus, build: Any, queue: str) -> list[str]:
    failures = []
    for dash in build.DASHBOARDS:
        for task in TASK_VIEW_TASKS if not dash.task_all else (".*",):
            for row in dash.rows:
                for panel in row.panels:
                    for target in panel.targets:
                        for mode, job in JOBS.items():
                            promql = substitute(target.expr, job, queue, task)
                            data = has_data(query(prom, promql))
                            key = (dash.file, task, panel.title, target.legend, mode)
                            if key in TIMING_DEPENDENT:
                                continue
                            # build.py's "inprocess" covers both in-process ways out.
                            modes = {*target.modes, *(IN if "inprocess" in target.modes else ())}
                            expected = mode in modes and key not in EMPTY_ON_PURPOSE
                            if data != expected:
                                failures.append(
                                    f"Prometheus {prom.version} {dash.file} '{panel.title}' "
                                    f"{mode}: {'data' if data else 'empty'}, expected "
                                    f"{'data' if expected else 'empty'}: {promql}")
    return failures


def _check_variables(prom: Prometheus, build: Any, queue: str) -> list[str]:
    failures = []
    for mode, job in JOBS.items():
        want = {"job": job, "queue": queue, "task": "tests.fail"}
        for name, selector in build.VARIABLE_SOURCES.items():
            label = "task_name" if name == "task" else name
            sel = substitute(selector, job, queue, ".*")
            body = json.loads(prom.get(f"/api/v1/label/{label}/values", **{"match[]": sel}))
            assert body["status"] == "success", body
            if want[name] not in body["data"]:
                failures.append(f"Prometheus {prom.version} variable {name} ({mode}): "
                                f"{body['data']} lacks {want[name]}")
    return failures


def _check_values(prom: Prometheus, queue: str) -> list[str]:
    """A few recorded values that must be exact in both modes."""
    failures = []
    ratio = "job_queue_task_name:celery_task_failures:ratio_rate5m"
    for task, expected in (("tests.fail", 1.0), ("tests.ok", 0.0)):
        got = prom.scalar_by(f'{ratio}{{queue="{queue}",task_name="{task}"}}', "job")
        if got != {job: expected for job in JOBS.values()}:
            failures.append(f"Prometheus {prom.version} {ratio} {task}: {got}")
    waits = query(prom, f'celery_task_queue_wait_seconds_count{{queue="{queue}",wait_from="eta"}}')
    if {r["metric"]["job"] for r in waits} != set(JOBS.values()):
        failures.append(f"Prometheus {prom.version}: ETA waits in {waits}")
    return failures


def test_rule_expectations_cover_every_rule() -> None:
    assert set(rule_expressions()) == set(RULE_EXPECT)
    assert all(re.fullmatch(r"[\w:]+", name) for name in RULE_EXPECT)
