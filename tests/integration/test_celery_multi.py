"""``celery multi`` under opentelemetry-instrument: one /metrics per node, none elsewhere.

Real ``celery multi start/restart/stopwait`` of three prefork nodes on Redis, real
short-lived commands (``celery call``, ``celery inspect ping``), and a worker whose port
is busy at start and freed later. Every node started is stopped, even when a test fails:
``celery multi stopwait``, then SIGKILL to whatever the pidfiles still name.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    BIN,
    REPO,
    Samples,
    instrumented_env,
    parse,
    producer,
    running_worker,
    scrape,
    value,
    wait_for,
)


def _sdk_calls_init_hooks() -> bool:
    from opentelemetry.sdk import _configuration

    return hasattr(_configuration, "_import_opamp")


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not _sdk_calls_init_hooks(),
        reason="this opentelemetry-sdk has no pre/post init hooks (1.28 has none, 1.45 has "
        "both): every process binds the configured port itself, as documented in "
        "docs/configuration.md",
    ),
]

APP = "tests.apps.tasks_app"
NODES = 3
# What the launcher and short-lived commands must never print.
METRICS_WORDS = re.compile(r"otel-celery-metrics|/metrics|Address already in use|Traceback")


def _consecutive_free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports that are free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base + count > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + count):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no {count} consecutive free ports")


def _env(broker_url: str, port: int) -> dict[str, str]:
    env = instrumented_env(broker_url, port, "tests-multi")
    env["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] = "otel,celery_worker"
    return env


class Multi:
    """``celery multi`` with fixed arguments: node ``<prefix>N`` consumes ``queues[N-1]``."""

    def __init__(self, workdir: Path, broker_url: str, base_port: int) -> None:
        self.workdir = workdir
        self.base_port = base_port
        self.env = _env(broker_url, base_port)
        prefix = f"mt{uuid.uuid4().hex[:6]}n"  # ends in a letter: the node number follows
        host = socket.gethostname()
        self.nodes = [f"{prefix}{i}@{host}" for i in range(1, NODES + 1)]
        self.queues = [f"{prefix}-q{i}" for i in range(1, NODES + 1)]
        self.args = [
            str(NODES), "-A", APP, f"--range-prefix={prefix}", f"--hostname={host}",
            "-P", "prefork", "-c", "2", "--loglevel=INFO",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            f"--pidfile={workdir}/%n.pid", f"--logfile={workdir}/%n%I.log",
        ]
        for i, queue in enumerate(self.queues, 1):
            self.args += [f"-Q:{i}", queue]

    def port(self, node: int) -> int:
        """The documented port of node number ``node``: the base port + node - 1."""
        return self.base_port + node - 1

    def celery(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        """``opentelemetry-instrument celery ARGS`` with the nodes' environment."""
        return subprocess.run(
            [str(BIN / "opentelemetry-instrument"), str(BIN / "celery"), *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout,
            check=False,
        )

    def multi(self, command: str) -> subprocess.CompletedProcess[str]:
        return self.celery("multi", command, *self.args)

    def pids(self) -> dict[str, int]:
        out = {}
        for node in self.nodes:
            with contextlib.suppress(OSError, ValueError):
                out[node] = int((self.workdir / f"{_short(node)}.pid").read_text().strip())
        return out

    def log(self, node: str) -> str:
        path = self.workdir / f"{_short(node)}.log"  # %n is the name before the @
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)[-2000:]}" for n in self.nodes)

    def stop(self) -> None:
        """stopwait, then SIGKILL the process group of every pid a pidfile still names."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.celery("multi", "stopwait", *self.args, timeout=60)
        for pid in self.pids().values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)  # a detached node leads its own session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _short(node: str) -> str:
    return node.partition("@")[0]


@pytest.fixture
def multi(tmp_path: Path, redis_url: str) -> Iterator[Multi]:
    nodes = Multi(tmp_path, redis_url, _consecutive_free_ports(NODES))
    try:
        yield nodes
    finally:
        nodes.stop()


def _node_samples(multi: Multi, node: int) -> Samples:
    return parse(scrape(multi.port(node)))


def _tasks_by_queue(samples: Samples) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), v in samples.items():
        if name == "celery_tasks_total":
            queue = dict(labels)["queue"]
            out[queue] = out.get(queue, 0) + v
    return out


def _assert_printed_nothing_about_metrics(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    found = METRICS_WORDS.findall(result.stdout + result.stderr)
    assert not found, result.stdout + result.stderr


def _wait_exact_counts(multi: Multi, expected: list[int]) -> None:
    for node, count in enumerate(expected, 1):
        queue = multi.queues[node - 1]
        wait_for(
            lambda n=node, q=queue, c=count: _tasks_by_queue(_node_samples(multi, n)) == {q: c},
            timeout=60, interval=0.3,
            what=lambda n=node: f"node {n}: {_tasks_by_queue(_node_samples(multi, n))}\n"
            f"{multi.logs()}",
        )


def test_celery_multi_start_3_serves_each_node_on_its_own_port_and_restart_keeps_them(
    multi: Multi,
) -> None:
    # Node 3's port is taken when the nodes start: node 3 says so in its log, naming
    # itself and the port, and serves as soon as the port is free again.
    holder = socket.socket()
    holder.bind(("127.0.0.1", multi.port(3)))
    holder.listen()
    node3 = multi.nodes[2]
    try:
        started = multi.multi("start")
        _assert_printed_nothing_about_metrics(started)
        wait_for(lambda: len(multi.pids()) == NODES, timeout=60, what=multi.logs)
        busy_line = wait_for(
            lambda: [ln for ln in multi.log(node3).splitlines() if "cannot serve" in ln],
            timeout=60, what=multi.logs,
        )
        assert len(busy_line) == 1, multi.logs()
        assert f"/metrics on 127.0.0.1:{multi.port(3)} (celery multi node {node3})" in (
            busy_line[0]
        )
    finally:
        holder.close()
    for node in range(1, NODES + 1):
        wait_for(lambda n=node: _node_samples(multi, n), timeout=60, interval=0.3,
                 what=lambda n=node: f"node {n} /metrics on {multi.port(n)}\n{multi.logs()}")
    wait_for(lambda: "now serving /metrics" in multi.log(node3), timeout=10, what=multi.logs)

    app = producer(multi.env["TEST_BROKER_URL"])
    for queue, count in zip(multi.queues, (1, 3, 4), strict=True):
        for i in range(count):
            app.send_task("tests.ok", args=(i,), queue=queue, routing_key=queue)
    # A short-lived command sends node 1 its second task while node 1 holds the base port
    # its environment names: it must neither bind it nor say anything about it.
    called = multi.celery("-A", APP, "call", "tests.ok", "--queue", multi.queues[0])
    _assert_printed_nothing_about_metrics(called)
    _wait_exact_counts(multi, [2, 3, 4])

    # One identity per node (what OTLP would carry too): the node's name, its own id.
    identities = [
        dict(next(labels for (name, labels) in _node_samples(multi, n) if name == "target_info"))
        for n in range(1, NODES + 1)
    ]
    assert [i["celery_worker_hostname"] for i in identities] == multi.nodes
    assert len({i["service_instance_id"] for i in identities}) == NODES

    pinged = multi.celery("-A", APP, "inspect", "ping", "--timeout", "10")
    _assert_printed_nothing_about_metrics(pinged)
    for node in multi.nodes:
        assert f"{node}: OK" in pinged.stdout, pinged.stdout
    # The launcher held no port while it started the nodes: node 1 got the base port.
    for node in multi.nodes[:2]:
        assert "cannot serve" not in multi.log(node), multi.logs()

    before = multi.pids()
    restarted = multi.multi("restart")
    _assert_printed_nothing_about_metrics(restarted)
    wait_for(lambda: all(multi.pids().get(n) not in (None, before[n]) for n in multi.nodes),
             timeout=60, what=multi.logs)
    # New processes on the same ports: fresh counts, then exactly the new tasks.
    for queue in multi.queues:
        app.send_task("tests.ok", args=(0,), queue=queue, routing_key=queue)
    _wait_exact_counts(multi, [1, 1, 1])

    stopped = multi.multi("stopwait")
    _assert_printed_nothing_about_metrics(stopped)
    for pid in multi.pids().values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_whose_port_is_busy_at_start_serves_once_it_is_freed(
    redis_url: str, queue: str
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = int(holder.getsockname()[1])
    try:
        with running_worker(redis_url, queue, pool="prefork", metrics_port=port) as worker:
            app = producer(redis_url)
            for i in range(2):
                app.send_task("tests.ok", args=(i,), queue=queue, routing_key=queue)
            wait_for(lambda: len(re.findall(r"Task tests\.ok\[[^\]]+\] succeeded",
                                            worker.log_text())) >= 2,
                     timeout=30, what=worker.log_text)
            busy = [line for line in worker.log_text().splitlines() if f":{port}" in line]
            assert len(busy) == 1, worker.log_text()[-3000:]
            assert "cannot serve /metrics" in busy[0]
            assert "tried again in the background" in busy[0]

            holder.close()
            # Counted while unserved, served once free (retries back off to every 15 s).
            wait_for(lambda: value(worker.samples(), "celery_tasks_total") == 2,
                     timeout=40, interval=0.3, what=worker.log_text)
            served = [line for line in worker.log_text().splitlines() if f":{port}" in line]
            assert len(served) == 2, worker.log_text()[-3000:]
            assert "now serving /metrics on 127.0.0.1:" in served[1]
            assert "Traceback" not in worker.log_text()
    finally:
        holder.close()
