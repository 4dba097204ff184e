"""The runnable blocks of the docs, run as written (issue 29: a newcomer's first hour).

Each block marked ``<!-- doc-test: NAME -->`` in README.md or docs/*.md is taken from the
page (``runnable(NAME)``) and run by bash from the repository's root, then what the page
promises is checked on what the commands did. tests/unit/test_documented_commands.py
fails when a marked block has no test here.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.doc_blocks import REPO, runnable
from tests.support import Worker, parse, producer, wait_for
from tests.tls_certs import get, make_tls_files

pytestmark = pytest.mark.integration

VARIABLE = "OTEL_CELERY_METRICS_WEB_CONFIG_FILE"
USER, PASSWORD = "prometheus", "first-hour-pw"
REGISTERED = ("tests.ok", "tests.fail", "tests.ignored", "tests.sleep")


def _http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - test URLs
        return int(resp.status), str(resp.read().decode())


def _run(text: str, *, stdin: str | None = None, env: dict[str, str] | None = None,
         new_session: bool = False) -> subprocess.CompletedProcess[str]:
    """A documented block, run as written by bash in the repository's root."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=REPO, text=True,
                          input=stdin, env=env, start_new_session=new_session,
                          capture_output=True, timeout=60, check=False)


def _bcrypt_hash_from_the_docs(password: str) -> str:
    # No controlling terminal (a new session): getpass reads the password from stdin.
    result = _run(runnable("bcrypt").text, stdin=password + "\n", new_session=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.parametrize("loglevel", [None, "INFO"], ids=["default-loglevel", "loglevel-info"])
def test_the_documented_bcrypt_hash_guards_a_worker_that_logs_what_it_enforces(
    tmp_path: Path, redis_url: str, queue: str, loglevel: str | None
) -> None:
    hashed = _bcrypt_hash_from_the_docs(PASSWORD)
    assert hashed.startswith("$2b$"), hashed
    tls = make_tls_files(tmp_path / "tls")
    config = tmp_path / "web.yml"
    config.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)},
        "basic_auth_users": {USER: hashed},
    }))
    # Four registered tasks and a cap of two names (docs/metrics.md, task_name): the
    # registered names past the cap are __overflow__ like any other.
    env = {VARIABLE: str(config), "OTEL_CELERY_METRICS_MAX_TASK_NAMES": "2"}
    worker = Worker(redis_url, queue, pool="prefork", concurrency=2, env=env, loglevel=loglevel)
    try:
        def serving() -> bool:
            if worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited:\n{worker.log_text()[-3000:]}")
            try:
                return get(worker.port, ca=tls.ca, auth=(USER, PASSWORD))[0] == 200
            except OSError:
                return False

        wait_for(serving, 40, 0.3, "the worker's /metrics over TLS with the documented hash")
        assert get(worker.port, ca=tls.ca, auth=(USER, "wrong"))[0] == 401
        # README "What you get": before its first task a worker serves the pool and health
        # series, and nothing labelled by task.
        idle = parse(get(worker.port, ca=tls.ca, auth=(USER, PASSWORD))[2])
        assert idle[("celery_worker_pool_processes", frozenset())] == 2.0
        assert not [name for name, labels in idle if "task_name" in dict(labels)]
        app = producer(redis_url)
        for name in REGISTERED:
            app.send_task(name, args=(0,) if name in ("tests.ok", "tests.sleep") else (),
                          queue=queue, routing_key=queue)

        def counted() -> dict[str, float] | None:
            samples = parse(get(worker.port, ca=tls.ca, auth=(USER, PASSWORD))[2])
            by_name: dict[str, float] = {}
            for (name, labels), value in samples.items():
                if name == "celery_tasks_total" and dict(labels).get("queue") == queue:
                    task = dict(labels)["task_name"]
                    by_name[task] = by_name.get(task, 0.0) + value
            return by_name if sum(by_name.values()) >= len(REGISTERED) else None

        by_name = wait_for(counted, 40, 0.3, "the four tasks counted")
        assert by_name.pop("__overflow__") == 2.0
        assert len(by_name) == 2 and set(by_name) <= set(REGISTERED), by_name
        log = worker.log_text()
    finally:
        worker.stop()
    want = (f"otel-celery-metrics: serving https://127.0.0.1:{worker.port}/metrics; web config "
            f"{config}: TLS (min TLS12, NoClientCert), basic auth for 1 user(s)")
    lines = [line for line in log.splitlines() if "otel-celery-metrics: serving" in line]
    assert len(lines) == 1, log[-3000:]
    assert lines[0].endswith(want) and "WARNING/MainProcess]" in lines[0], lines[0]
    assert hashed not in log and PASSWORD not in log


def test_the_documented_metrics_only_collector_config_validates_with_no_variable() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACES_BACKEND_")}
    result = _run(runnable("collector-metrics-only").text, env=env)
    assert result.returncode == 0, result.stderr


def _set_ports(block: str) -> dict[str, int]:
    """``--set`` key -> the port the block gives it."""
    ports = {key: int(port) for key, port in
             re.findall(r"--set=([\w:/]+)=127\.0\.0\.1:(\d+)", block)}
    telemetry = re.search(r"--set=(service::telemetry::metrics::readers)=.*port: (\d+)", block)
    assert telemetry, block
    ports[telemetry.group(1)] = int(telemetry.group(2))
    return ports


def test_the_documented_set_keys_move_every_collector_port() -> None:
    block = runnable("collector-ports").text
    ports = _set_ports(block)
    table = (REPO / "docs" / "collector.md").read_text()
    assert set(ports) == set(re.findall(r"\| `([\w:/]+::[\w:/]+)`", table)), ports
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACES_BACKEND_")}
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", f"exec {block.strip()}"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"the Collector exited with {proc.returncode}:\n{out}")
            health = ports["extensions::health_check::endpoint"]
            return "Server available" in _http_get(f"http://127.0.0.1:{health}/")[1]

        wait_for(healthy, 30, 0.2, "the Collector's health check on the documented port")
        scrape = ports["exporters::prometheus::endpoint"]  # what Prometheus scrapes
        assert _http_get(f"http://127.0.0.1:{scrape}/metrics")[0] == 200
        own = ports["service::telemetry::metrics::readers"]
        assert "otelcol_process_uptime" in _http_get(f"http://127.0.0.1:{own}/metrics")[1]
        for key in ("receivers::otlp::protocols::grpc::endpoint",
                    "receivers::otlp::protocols::http::endpoint"):
            socket.create_connection(("127.0.0.1", ports[key]), 2).close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        if proc.stdout:
            proc.stdout.close()
