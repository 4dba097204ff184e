"""The real Collector down, restarted and hung: tasks unaffected, one log line per failed
export, exact totals once it is back.

The worker exports to tools/otelcol-celery running the shipped collector-config.yaml; the
totals are read from the Collector's prometheus exporter, i.e. what Prometheus would scrape.
(tests/integration/test_otlp_failure.py pins the same behaviour against the test receiver,
where it can also check request pacing.)
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.otlp_receiver import OtlpGrpcReceiver, otlp_env
from tests.servers import Collector
from tests.support import Worker, parse, producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration

INTERVAL_MS = 500
FINAL_METRICS_ERROR = re.compile(r"ERROR/MainProcess\] Failed to export metrics batch")


def _succeeded(worker: Worker) -> int:
    return worker.log_text().count(" succeeded in ")


def _failed_exports(worker: Worker) -> int:
    return sum(1 for line in worker.log_text().splitlines() if FINAL_METRICS_ERROR.search(line))


def _served_total(collector: Collector, queue: str) -> float:
    return value(parse(collector.metrics_text()), "celery_tasks_total", queue=queue,
                 state="SUCCESS")


def test_collector_down_restarted_and_hung_tasks_run_and_totals_come_back_exact(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    with OtlpGrpcReceiver() as sink:
        collector = Collector(tmp_path, Path("collector-config.yaml").resolve(),
                              f"127.0.0.1:{sink.port}")
        # A 2 s export timeout: a hung Collector costs each export 2 s, never a task.
        env = otlp_env(collector.http_endpoint, interval_ms=INTERVAL_MS,
                       OTEL_EXPORTER_OTLP_TIMEOUT="2")
        app = producer(redis_url)
        try:
            with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                                env=env) as worker:
                # Down: nothing listens on the Collector's port yet.
                for i in range(40):
                    app.send_task("tests.ok", args=(i,), queue=queue)
                wait_for(lambda: _succeeded(worker) >= 40, timeout=30,
                         what="every task succeeds with the Collector down")
                wait_for(lambda: _failed_exports(worker) >= 2, timeout=30,
                         what="failed exports are logged")
                # One ERROR line per failed export, not per task or per retry.
                assert _failed_exports(worker) < 40 / 2

                # Back: the first exports carry the full cumulative totals.
                collector.start()
                wait_for(lambda: _served_total(collector, queue) == 40, timeout=30,
                         what=lambda: f"totals after restart\n{collector.log_tail()}")

                # Hung (SIGSTOP): connections are accepted, never answered.
                collector.pause()
                failed_before = _failed_exports(worker)
                for i in range(20):
                    app.send_task("tests.ok", args=(i,), queue=queue)
                wait_for(lambda: _succeeded(worker) >= 60, timeout=20,
                         what="tasks run while exports hang")
                wait_for(lambda: _failed_exports(worker) > failed_before, timeout=30,
                         what="a timed-out export is logged")
                collector.resume()
                wait_for(lambda: _served_total(collector, queue) == 60, timeout=30,
                         what=lambda: f"totals after the hang\n{collector.log_tail()}")
        finally:
            collector.stop()
