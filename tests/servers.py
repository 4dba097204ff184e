"""Real servers for integration tests: Prometheus (Debian's 2.x and our Prometheus 3) and the
OpenTelemetry Collector built from tools/otelcol-celery.

Every server runs on free ports in its own process group, logs to a file the failure
message quotes, and is waited on through its own readiness endpoint (never a sleep). A
missing binary fails the test with the command that provides it: CI never skips these.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO, free_port, wait_for

TOOLS = REPO / ".tools" / "bin"
SETUP_HINT = "run scripts/setup (scripts/test runs it), which installs and builds it"


def tool(name: str) -> str:
    """Path of a server binary: Debian's Prometheus 2 or one scripts/setup built."""
    if name == "prometheus2":
        found = shutil.which("prometheus") or ""
        hint = "apt-get install prometheus (scripts/setup does)"
    else:
        found = str(TOOLS / name) if (TOOLS / name).exists() else ""
        hint = SETUP_HINT
    if not found:
        pytest.fail(f"{name} not found: this test needs a real {name}; {hint}")
    return found


def _stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a paused server cannot handle SIGTERM
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - test URLs
        return str(resp.read().decode())


class Prometheus:
    """A running Prometheus server and its HTTP API."""

    def __init__(self, version: str, port: int, log: Path) -> None:
        self.version = version
        self.url = f"http://127.0.0.1:{port}"
        self.log = log

    def get(self, path: str, **params: str) -> str:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return _get(f"{self.url}{path}{query}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = json.loads(self.get("/api/v1/query", query=promql))
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    def scalar_by(self, promql: str, label: str) -> dict[str, float]:
        """An instant vector as {value of ``label``: sample value}."""
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def series(self, match: str) -> list[dict[str, str]]:
        body = json.loads(self.get("/api/v1/series", **{"match[]": match}))
        assert body["status"] == "success", body
        return list(body["data"])

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def scrape_config(
    job: str, target: str, *, honor_labels: bool = False, interval: str = "1s"
) -> dict[str, Any]:
    return {
        "job_name": job,
        "honor_labels": honor_labels,
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "static_configs": [{"targets": [target]}],
    }


@contextmanager
def running_prometheus(
    workdir: Path,
    version: str,
    scrape_configs: Sequence[dict[str, Any]] = (),
    *,
    extra_config: dict[str, Any] | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[Prometheus]:
    """Prometheus ``version`` ("2" = Debian's 2.x, "3" = .tools/bin/prometheus3)."""
    binary = tool(f"prometheus{version}")
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": list(scrape_configs),
        **(extra_config or {}),
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *extra_args,
            ],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = Prometheus(version, port, log)
    try:
        def ready() -> bool:
            if proc.poll() is not None:
                msg = f"prometheus {version} exited with {proc.returncode}:\n{server.log_tail()}"
                raise RuntimeError(msg)
            return "Ready" in server.get("/-/ready")

        wait_for(ready, timeout=30, interval=0.2, what=f"prometheus {version} /-/ready")
        yield server
    finally:
        _stop(proc)


class Collector:
    """The real Collector (otelcol-celery) running a config file, on free ports.

    The file is used unchanged; ports and the traces backend are set on the command line
    (``--set``), the way an operator overrides one value without editing the file.
    """

    def __init__(self, workdir: Path, config: Path, traces_endpoint: str) -> None:
        self.binary = tool("otelcol-celery")
        self.config = config
        self.grpc_port, self.http_port = free_port(), free_port()
        self.prometheus_port, self.health_port = free_port(), free_port()
        self.telemetry_port = free_port()
        self.log = workdir / "otelcol.log"
        self.env = {
            **os.environ,
            "TRACES_BACKEND_ENDPOINT": traces_endpoint,
            "TRACES_BACKEND_INSECURE": "true",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def prometheus_target(self) -> str:
        return f"127.0.0.1:{self.prometheus_port}"

    def command(self) -> list[str]:
        sets = {
            "receivers::otlp::protocols::grpc::endpoint": f"127.0.0.1:{self.grpc_port}",
            "receivers::otlp::protocols::http::endpoint": f"127.0.0.1:{self.http_port}",
            "exporters::prometheus::endpoint": self.prometheus_target,
            "extensions::health_check::endpoint": f"127.0.0.1:{self.health_port}",
            # The Collector's own metrics would take :8888 on every test run.
            "service::telemetry::metrics::level": "none",
        }
        args = [self.binary, f"--config={self.config}"]
        args += [f"--set={key}={val}" for key, val in sets.items()]
        return args

    def start(self) -> Collector:
        with self.log.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.command(), env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                msg = f"otelcol-celery exited with {self.proc.returncode}:\n{self.log_tail()}"
                raise RuntimeError(msg)
            return "Server available" in _get(f"http://127.0.0.1:{self.health_port}/", 2)

        wait_for(healthy, timeout=30, interval=0.2, what=lambda: f"collector health\n"
                 f"{self.log_tail()}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def pause(self) -> None:
        """SIGSTOP: the Collector accepts connections (the kernel does) but never answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def metrics_text(self) -> str:
        """What the Collector's prometheus exporter serves (what Prometheus would scrape)."""
        return _get(f"http://{self.prometheus_target}/metrics")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-3000:]
        return ""


@contextmanager
def running_collector(
    workdir: Path, traces_endpoint: str, config: Path = REPO / "collector-config.yaml"
) -> Iterator[Collector]:
    workdir.mkdir(parents=True, exist_ok=True)
    collector = Collector(workdir, config, traces_endpoint)
    try:
        yield collector.start()
    finally:
        collector.stop()
