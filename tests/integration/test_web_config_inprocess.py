"""The in-process /metrics (OTEL_METRICS_EXPORTER=prometheus) behind
OTEL_CELERY_METRICS_WEB_CONFIG_FILE: a real prefork worker under opentelemetry-instrument,
scraped by a real Prometheus over TLS with basic auth and a client certificate; a bad file
keeps the endpoint closed while tasks run."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_celery_metrics.core.web_config import BCRYPT_COMMAND
from tests.servers import running_prometheus
from tests.support import Worker, producer, running_worker, wait_for
from tests.tls_certs import TLSFiles, bcrypt_hash, get, make_tls_files

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

VARIABLE = "OTEL_CELERY_METRICS_WEB_CONFIG_FILE"
USER, PASSWORD = "prometheus", "worker-scrape-pw"


def _send_ok(broker_url: str, queue: str, n: int) -> None:
    app = producer(broker_url)
    for i in range(n):
        app.send_task("tests.ok", args=(i,), queue=queue, routing_key=queue)


def _succeeded(worker: Worker) -> int:
    return len(re.findall(r"Task tests\.ok\[[^\]]+\] succeeded", worker.log_text()))


def test_prometheus_scrapes_the_worker_over_tls_with_basic_auth_and_a_client_certificate(
    tmp_path: Path, redis_url: str, queue: str
) -> None:
    tls: TLSFiles = make_tls_files(tmp_path / "tls")
    hashed = bcrypt_hash(PASSWORD)
    config = tmp_path / "web.yml"
    config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key),
                              "client_ca_file": str(tls.ca)},
        "basic_auth_users": {USER: hashed},
    }))
    with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                        env={VARIABLE: str(config)}) as worker:
        port = worker.port
        _send_ok(redis_url, queue, 2)
        wait_for(lambda: _succeeded(worker) >= 2, 30, what="2 tasks succeeded")
        # Real TLS clients first: no password, plain HTTP, no client certificate.
        client = (tls.client_cert, tls.client_key)
        assert get(port, ca=tls.ca, client=client)[0] == 401
        with pytest.raises(OSError):
            get(port, auth=(USER, PASSWORD))
        with pytest.raises(OSError):
            get(port, ca=tls.ca, auth=(USER, PASSWORD))

        def job(name: str, password: str) -> dict[str, Any]:
            return {"job_name": name, "scheme": "https",
                    "tls_config": {"ca_file": str(tls.ca), "cert_file": str(tls.client_cert),
                                   "key_file": str(tls.client_key)},
                    "basic_auth": {"username": USER, "password": password},
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}

        jobs = [job("worker", PASSWORD), job("wrong_password", "nope")]
        with running_prometheus(tmp_path / "prom", "2", jobs) as prometheus:
            def scraped() -> dict[str, dict[str, Any]] | None:
                body = json.loads(prometheus.get("/api/v1/targets"))["data"]["activeTargets"]
                found = {t["labels"]["job"]: t for t in body}
                return found if all(t["health"] != "unknown" for t in found.values()) else None

            found = wait_for(scraped, 30, interval=0.3, what="both targets scraped")
            assert found["worker"]["health"] == "up", found["worker"]
            assert found["wrong_password"]["health"] == "down"
            assert "401" in found["wrong_password"]["lastError"]
            total = wait_for(lambda: prometheus.scalar_by(
                f'sum(celery_tasks_total{{job="worker",queue="{queue}"}})', "job"), 20,
                what="the worker's task counter in Prometheus")
            assert total == {"": 2.0}
        log = worker.log_text()
    assert hashed not in log and "PRIVATE KEY" not in log


def test_a_bad_web_config_keeps_the_endpoint_closed_and_tasks_running(
    tmp_path: Path, redis_url: str, queue: str
) -> None:
    config = tmp_path / "web.yml"
    config.write_text("basic_auth_users: {prometheus: plaintext-secret}\n")
    with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                        env={VARIABLE: str(config)}) as worker:
        _send_ok(redis_url, queue, 3)
        wait_for(lambda: _succeeded(worker) >= 3, 30, what="3 tasks succeeded")
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", worker.port), 2):
            pass
        log = worker.log_text()
    # One line, through the worker's own logging (a celery multi node's stderr is /dev/null
    # before Celery sets logging up, so the reader holds the line until then).
    errors = [line for line in log.splitlines() if VARIABLE in line]
    assert len(errors) == 1, log[-3000:]
    assert "ERROR/MainProcess] " in errors[0]
    assert errors[0].endswith(
        f"otel-celery-metrics: {VARIABLE}: web config {config}: basic_auth_users.prometheus is "
        "not a bcrypt hash (a plaintext password?); make one with the Python that has "
        f"otel-celery-metrics installed: {BCRYPT_COMMAND}; this worker's /metrics is not served "
        "(tasks keep running)"
    ), errors[0]
    assert "plaintext-secret" not in log
    assert "Traceback" not in log
