"""Real brokers, real ``celery worker`` processes, the exporter as a subprocess.

Every test gets its own queue; processes started here are stopped here (whole process
group, so a killed worker leaves no pool children behind).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.exporter.support import value, wait_for
from tests.tls_certs import TLSFiles

REDIS_URL = os.environ.get("EXPORTER_TEST_REDIS", "redis://127.0.0.1:6379/12")
RABBITMQ_URL = os.environ.get("EXPORTER_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672//")
REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


class Proc:
    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.log_path = Path(tempfile.mkstemp(prefix="exporter-test-", suffix=".log")[1])
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group, as the OOM killer or a node loss would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class ExporterProc(Proc):
    def __init__(self, broker: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        super().__init__(
            [
                str(BIN / "otel-celery-exporter"),
                f"--broker-url={broker}",
                f"--port={self.port}",
                "--host=127.0.0.1",
                "--worker-timeout=4",
                "--inspect-interval=1",
                "--queue-poll-interval=0.5",
                "--probe-timeout=2",
                "--reconnect-max=2",
                "--reconnect-initial=0.2",
                "--log-level=INFO",
                *args,
            ],
            env,
        )
        wait_for(lambda: self.get("/health")[0] in (200, 503), 20, "the exporter to listen")

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def scrape(self) -> str:
        status, text = self.get("/metrics")
        assert status == 200
        return text


class WorkerProc(Proc):
    def __init__(
        self, broker: str, queue: str, node: str, *, events: bool = True, concurrency: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        argv = [
            str(BIN / "celery"),
            "-A",
            "tests.exporter.exporter_app",
            "worker",
            "-Q",
            queue,
            "-n",
            f"{node}@%h",
            "-c",
            str(concurrency),
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ]
        if events:
            argv.append("-E")
        super().__init__(
            argv, env={"EXPORTER_TEST_BROKER": broker, "EXPORTER_TEST_QUEUE": queue, **(env or {})}
        )
        self.node = f"{node}@{socket.gethostname()}"


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_url() -> str:
    if not answers("127.0.0.1", 6379):
        pytest.fail(f"Redis at {REDIS_URL} does not answer: scripts/setup starts it")
    return REDIS_URL


@pytest.fixture
def rabbitmq_url() -> str:
    if not answers("127.0.0.1", 5672):
        pytest.fail(f"RabbitMQ at {RABBITMQ_URL} does not answer: scripts/setup starts it")
    return RABBITMQ_URL


def assert_only_the_chain_check_connects(full: ExporterProc, ca_only: ExporterProc,
                                        failure: str) -> None:
    """``full`` (chain and host name) and ``ca_only`` (chain) against a broker whose
    certificate names another host: ``ca_only`` connects, ``full`` keeps retrying with one
    ERROR line that contains ``failure``, a failing /health and broker_connected 0."""
    wait_for(lambda: value(ca_only.scrape(), "celery_exporter_broker_connected") == 1, 30,
             "the chain-only exporter to connect")
    assert ca_only.get("/health")[0] == 200
    wait_for(lambda: full.log.count("cannot reach the broker") >= 3, 30,
             "three failed connection attempts")
    errors = [line for line in full.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert failure in errors[0]
    assert full.get("/health")[0] == 503
    assert value(full.scrape(), "celery_exporter_broker_connected") == 0


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


@pytest.fixture
def start_exporter(procs: list[Proc]):
    def start(broker: str, *args: str) -> ExporterProc:
        exporter = ExporterProc(broker, *args)
        procs.append(exporter)
        return exporter

    return start


@pytest.fixture
def start_worker(procs: list[Proc]):
    def start(broker: str, queue: str, node: str = "w1", **kw: Any) -> WorkerProc:
        worker = WorkerProc(broker, queue, node, **kw)
        procs.append(worker)
        return worker

    return start


def producer(broker: str, *, sent_events: bool = True, **conf: Any) -> Any:
    from celery import Celery

    app = Celery("exporter-test-producer", broker=broker, set_as_current=False)
    app.conf.update(
        task_send_sent_event=sent_events, broker_connection_retry_on_startup=True, **conf
    )
    return app


class RedisServer:
    """A private redis-server this test may stop and restart (never the shared one).

    With ``tls`` it serves TLS only, with that server certificate, and requires a client
    certificate its CA signed.
    """

    def __init__(self, password: str, tls: TLSFiles | None = None) -> None:
        self.port = free_port()
        self.password = password
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        tls = self.tls
        listen = (
            ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(tls.server_cert),
             "--tls-key-file", str(tls.server_key), "--tls-ca-cert-file", str(tls.ca),
             "--tls-auth-clients", "yes"]
            if tls else ["--port", str(self.port)]
        )
        self.proc = subprocess.Popen(
            [
                "redis-server",
                *listen,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                self.password,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: answers("127.0.0.1", self.port), 10, "redis-server to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    @property
    def url(self) -> str:
        if self.tls:  # "localhost": the name the test certificate carries
            return f"rediss://:{self.password}@localhost:{self.port}/0"
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=f"pw-{uuid.uuid4().hex[:12]}")
    yield server
    server.stop()
