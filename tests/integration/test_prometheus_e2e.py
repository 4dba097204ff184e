"""A real Prometheus server scrapes a real instrumented prefork worker (job "celery").

The seed guide's Step 5, automated: through Prometheus' HTTP API, ``up{job="celery"}``
is 1 and ``sum by (task_name) (rate(celery_tasks_total{state="SUCCESS"}[5m]))`` has a
positive rate for the tasks that ran.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, producer, running_worker, value, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

PROMETHEUS = "/usr/bin/prometheus"
RATE_QUERY = 'sum by (task_name) (rate(celery_tasks_total{state="SUCCESS"}[5m]))'


def _prometheus_binary() -> str:
    found = PROMETHEUS if Path(PROMETHEUS).exists() else shutil.which("prometheus")
    if not found:
        pytest.fail(
            f"{PROMETHEUS} not found: this test needs a real Prometheus server "
            "(apt-get install prometheus; CI installs it)"
        )
    return found


class Prometheus:
    def __init__(self, port: int, log: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=5) as resp:  # noqa: S310
            return resp.read().decode()

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = json.loads(self.get("/api/v1/query", query=promql))
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextmanager
def running_prometheus(tmp_path: Path, target_port: int) -> Iterator[Prometheus]:
    binary = _prometheus_binary()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n"
        "  scrape_interval: 1s\n"
        "  scrape_timeout: 1s\n"
        "  evaluation_interval: 1s\n"
        "scrape_configs:\n"
        '  - job_name: "celery"\n'
        "    static_configs:\n"
        f'      - targets: ["127.0.0.1:{target_port}"]\n'
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Prometheus(port, log)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                msg = f"prometheus exited with {proc.returncode}:\n{server.log_tail()}"
                raise RuntimeError(msg)
            return "Ready" in server.get("/-/ready")

        wait_for(ready, timeout=30, interval=0.2, what="prometheus /-/ready")
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_prometheus_scrapes_the_worker_and_sees_task_rates(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    with running_worker(redis_url, queue, pool="prefork", concurrency=2) as worker, \
            running_prometheus(tmp_path, worker.port) as prom:
        app = producer(redis_url)

        def send(n: int) -> None:
            for i in range(n):
                app.send_task("tests.ok", args=(i,), queue=queue, routing_key=queue)

        send(5)
        wait_for(lambda: value(worker.samples(), "celery_tasks_total", state="SUCCESS") >= 5,
                 timeout=30, what="5 SUCCESS on the worker's /metrics")
        # Prometheus holds a first sample of the series ...
        wait_for(lambda: prom.query('celery_tasks_total{job="celery",state="SUCCESS"}'),
                 timeout=30, what="celery_tasks_total in Prometheus")
        # ... then more tasks run, so the rate over the window is positive.
        send(5)

        def positive_rate() -> list[dict[str, Any]]:
            result = prom.query(RATE_QUERY)
            return [r for r in result if float(r["value"][1]) > 0]

        try:
            rates = wait_for(positive_rate, timeout=30, what=RATE_QUERY)
            up = wait_for(lambda: prom.query('up{job="celery"}'), timeout=10, what="up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprometheus log:\n{prom.log_tail()}") from None

    assert [float(r["value"][1]) for r in up] == [1.0]
    assert up[0]["metric"]["instance"] == f"127.0.0.1:{worker.port}"
    assert {r["metric"]["task_name"] for r in rates} == {"tests.ok"}
