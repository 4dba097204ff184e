"""An instrumented prefork worker behind a real fault proxy (Toxiproxy) to its broker.

The producer sends directly; only the worker's broker connections go through the proxy.
Through latency, a bandwidth limit, a hang (bytes stop, connections stay open) and a
reset, the worker's own /metrics keeps answering (it never waits on the broker) and,
once the fault is gone, every task that ran is counted exactly once.

No task is sent while the connections hang: Toxiproxy drops the bytes it holds, so a
task Redis handed out in a BRPOP reply would be lost in the proxy, a loss of the fault
itself and not of the instrumentation.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support import Worker, producer, scrape, value, wait_for
from tests.toxiproxy import Toxiproxy

pytestmark = pytest.mark.integration

#: kombu's checks of the worker's Redis connections, short enough for a test: a BRPOP
#: with no reply for brpop_timeout + health_check_interval is dropped and redone.
WORKER_TRANSPORT_OPTIONS = {"health_check_interval": 2, "socket_timeout": 3,
                            "socket_connect_timeout": 3}


@pytest.fixture
def toxiproxy() -> Iterator[Toxiproxy]:
    server = Toxiproxy()
    yield server
    server.stop()


def _succeeded(worker: Worker) -> float:
    return value(worker.samples(), "celery_tasks_total", state="SUCCESS")


def _answers_throughout(worker: Worker, seconds: float) -> None:
    """The worker's /metrics answers, quickly, every 0.25 s for ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        scrape(worker.port)
        assert time.monotonic() - started < 2, "/metrics waited on the hung broker"
        time.sleep(0.25)


def test_a_worker_behind_latency_a_bandwidth_limit_a_hang_and_a_reset_counts_every_task_once(
    redis_url: str, queue: str, toxiproxy: Toxiproxy
) -> None:
    parts = urlsplit(redis_url)
    proxy = toxiproxy.proxy("worker-redis", parts.port or 6379)
    through = parts._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()
    app = producer(redis_url)
    worker = Worker(through, queue, concurrency=2,
                    env={"TEST_CELERY_CONF": json.dumps(
                        {"broker_transport_options": WORKER_TRANSPORT_OPTIONS})})
    try:
        worker.wait_ready()

        def run(count: int, total: int, what: str, timeout: float = 30) -> float:
            sent = time.monotonic()
            for i in range(count):
                app.send_task("tests.ok", args=(i,), queue=queue)
            wait_for(lambda: _succeeded(worker) == total, timeout,
                     what=lambda: f"{what}\n{worker.log_text()[-3000:]}")
            return time.monotonic() - sent

        run(5, 5, "five tasks")

        proxy.latency(500)
        slow = run(5, 10, "five tasks under 500 ms of latency")
        proxy.cure()

        proxy.bandwidth(8)
        narrow = run(5, 15, "five tasks through 8 KB/s")
        proxy.cure()

        proxy.hang()
        _answers_throughout(worker, 6)
        assert _succeeded(worker) == 15
        proxy.cure()
        recovered = run(5, 20, "five tasks after the hang", timeout=60)

        proxy.reset()
        _answers_throughout(worker, 1)
        proxy.cure()
        after_reset = run(5, 25, "five tasks after the reset", timeout=60)

        samples = worker.samples()
        assert value(samples, "celery_tasks_total") == 25
        assert value(samples, "celery_task_runtime_seconds_count") == 25
        assert value(samples, "celery_tasks_received_total") == 25
        assert worker.proc.poll() is None
        print(f"worker: 5 tasks took {slow:.1f}s under latency, {narrow:.1f}s through 8 KB/s, "
              f"{recovered:.1f}s after the hang, {after_reset:.1f}s after the reset")
    finally:
        worker.stop()
