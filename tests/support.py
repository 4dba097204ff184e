"""Test support: real worker processes, scrapes, and waiting on conditions with deadlines.

Shared by every integration test (in-process, prefork, OTLP). Nothing here sleeps and
hopes: :func:`wait_for` polls a condition until a deadline and fails with what it saw.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
#: JSON ``broker_transport_options`` for every Celery app of a test (set by the SQS fixtures:
#: region, polling, queue_name_prefix); read by the tests' apps and :func:`producer`.
TRANSPORT_OPTIONS_ENV = "TEST_BROKER_TRANSPORT_OPTIONS"
#: The brokers of the core cases (prefork counts, queue label, queue wait, relay,
#: saturation): ``@pytest.mark.parametrize("core_broker_url", CORE_BROKERS, indirect=True)``.
CORE_BROKERS = ["redis", "sqs", "sqs-prefixed"]

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    condition: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.1,
    what: str | Callable[[], str] = "",
) -> T:
    """Poll ``condition`` until it returns a truthy value; fail after ``timeout`` seconds.

    ``what`` names the condition in the failure message; a callable is asked only then,
    for a report of the state that did not come (what arrived, a worker's log tail).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    last_exc: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            last_exc = None
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling; report the last one
            last_exc = exc
        time.sleep(interval)
    described = what() if callable(what) else what
    msg = f"timed out after {timeout}s waiting for {described or condition}: last={last!r}"
    raise AssertionError(msg) from last_exc


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, labels) -> value."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= set(lbls))


def unique_queue(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def instrumented_env(broker_url: str, port: int, service_name: str) -> dict[str, str]:
    """The environment of a celery process the tests start under ``opentelemetry-instrument``:
    the tests' apps importable, metrics served on 127.0.0.1:``port``, nothing else exported."""
    env = dict(os.environ)
    env.update({
        "TEST_BROKER_URL": broker_url,
        "PYTHONPATH": str(REPO),
        "OTEL_SERVICE_NAME": service_name,
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        # Keep the test's own instrumentations out of the way.
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "celery,redis,urllib,urllib3,requests",
    })
    return env


class Worker:
    """A real ``celery worker`` process, started through ``opentelemetry-instrument``."""

    def __init__(
        self,
        broker_url: str,
        queue: str,
        *,
        pool: str = "prefork",
        concurrency: int = 2,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        app: str = "tests.apps.tasks_app",
        instrument: bool = True,
        metrics_port: int | None = None,
        events: bool = False,
        heartbeat: bool = False,
        loglevel: str | None = "INFO",
    ) -> None:
        self.queue = queue
        self.broker_url = broker_url
        self.port = metrics_port or free_port()
        self.node = f"w-{uuid.uuid4().hex[:8]}@%h"
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
            prefix="celery-worker-", suffix=".log", delete=False
        )
        full_env = instrumented_env(broker_url, self.port, "tests-worker")
        full_env.update(env or {})
        cmd = [
            str(BIN / "celery"), "-A", app, "worker", "-P", pool, "-Q", queue,
            "-n", self.node, "--without-gossip", "--without-mingle",
        ]
        # None: Celery's default level (WARNING), as a user who passes no --loglevel gets.
        if loglevel is not None:
            cmd.append(f"--loglevel={loglevel}")
        # Task events (-E) and heartbeats are for a standalone exporter watching the same
        # worker; nothing else needs them.
        if events:
            cmd.append("-E")
        if not (events or heartbeat):
            cmd.append("--without-heartbeat")
        if pool in ("prefork", "threads", "gevent", "eventlet"):
            cmd += ["-c", str(concurrency)]
        cmd += list(extra_args)
        if instrument:
            cmd = [str(BIN / "opentelemetry-instrument"), *cmd]
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def nodename(self) -> str:
        """The node name Celery gives this worker (``%h`` expanded)."""
        return self.node.replace("%h", socket.gethostname())

    def log_text(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def thread_stacks(self, timeout: float = 3.0) -> str:
        """Every thread's stack of the worker and its pool children (for a hang report).

        tests.apps.tasks_app makes SIGUSR2 dump them into the worker log.
        """
        pids = [self.proc.pid, *_children_of(self.proc.pid)]
        before = len(self.log_text())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + timeout
        text = self.log_text()
        while time.monotonic() < deadline and text.count("Current thread", before) < len(pids):
            time.sleep(0.05)
            text = self.log_text()
        return f"pids {pids}:\n{text[before:]}"

    def wait_ready(self, timeout: float = 40.0) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                msg = f"worker exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
                raise RuntimeError(msg)
            return " ready." in self.log_text()

        try:
            wait_for(ready, timeout, 0.2, "worker ready")
        except AssertionError:
            raise AssertionError(f"worker not ready:\n{self.log_text()[-3000:]}") from None

    def samples(self) -> Samples:
        return parse(scrape(self.port))

    def child_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
        ).stdout
        return [int(p) for p in out.split()]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        # Leftover pool children of a killed main process.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()  # log_text() reads by name; an unclosed file is a ResourceWarning
        return int(self.proc.returncode)


@contextmanager
def running_worker(broker_url: str, queue: str, **kwargs: Any) -> Iterator[Worker]:
    worker = Worker(broker_url, queue, **kwargs)
    try:
        worker.wait_ready()
        yield worker
    finally:
        worker.stop()
        if os.environ.get("TEST_SHOW_WORKER_LOG"):
            print(worker.log_text())


_PRODUCERS: list[Any] = []


def transport_options() -> dict[str, Any]:
    """The test's ``broker_transport_options`` (TRANSPORT_OPTIONS_ENV), ``{}`` when unset."""
    return dict(json.loads(os.environ.get(TRANSPORT_OPTIONS_ENV) or "{}"))


def producer(broker_url: str) -> Any:
    """A plain (uninstrumented) Celery app that sends tasks by name."""
    from celery import Celery

    app = Celery("producer", broker=broker_url)
    app.conf.broker_transport_options = transport_options()
    _PRODUCERS.append(app)
    return app


def close_producers() -> None:
    """Close the producers' broker connections (called after each test)."""
    while _PRODUCERS:
        _PRODUCERS.pop().close()
