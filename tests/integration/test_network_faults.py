"""An instrumented prefork worker behind a real fault proxy (Toxiproxy) to its broker.

The producer sends directly; only the worker's broker connections go through the proxy.
Through latency, a bandwidth limit, a hang (bytes stop, connections stay open) and a
reset, the worker's own /metrics keeps answering (it never waits on the broker) and,
once the fault is gone, every task that ran is counted exactly once.

No task is sent while the connections hang: Toxiproxy drops the bytes it holds, so a
task Redis handed out in a BRPOP reply would be lost in the proxy, a loss of the fault
itself and not of the instrumentation.

The same runs against RabbitMQ, with a short AMQP heartbeat so the hang is noticed; the
time until the worker logs the lost connection is measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.fault_matrix import record
from tests.support import Worker, producer, scrape, value, wait_for
from tests.toxiproxy import Toxiproxy

pytestmark = pytest.mark.integration

#: kombu's checks of the worker's Redis connections, short enough for a test: a BRPOP
#: with no reply for brpop_timeout + health_check_interval is dropped and redone.
WORKER_TRANSPORT_OPTIONS = {"health_check_interval": 2, "socket_timeout": 3,
                            "socket_connect_timeout": 3}
#: The worker's AMQP heartbeat (seconds): Celery checks it twice per interval and drops a
#: connection that has heard nothing for two intervals, so a hang is noticed in about 4 s.
#: RabbitMQ's side negotiates the same value and closes its end too, which returns the
#: unacknowledged deliveries of the hung connection to the queue.
WORKER_AMQP_HEARTBEAT = 2
#: The worker's log line when it notices a dead broker connection.
LOST = "consumer: Connection to broker lost"


@pytest.fixture
def toxiproxy() -> Iterator[Toxiproxy]:
    server = Toxiproxy()
    yield server
    server.stop()


def _succeeded(worker: Worker) -> float:
    return value(worker.samples(), "celery_tasks_total", state="SUCCESS")


def _answering(worker: Worker, since: float, seconds: float) -> float | None:
    """Scrape the worker's /metrics every 0.25 s until ``seconds`` after ``since``, each
    answer quick; the seconds from ``since`` to its first lost-connection line, if any
    (one clock for both)."""
    noticed: float | None = None
    while time.monotonic() - since < seconds:
        started = time.monotonic()
        scrape(worker.port)
        assert time.monotonic() - started < 2, "/metrics waited on the hung broker"
        if noticed is None and LOST in worker.log_text():
            noticed = time.monotonic() - since
        time.sleep(0.25)
    return noticed


def _answers_throughout(worker: Worker, seconds: float) -> None:
    """The worker's /metrics answers, quickly, every 0.25 s for ``seconds``."""
    _answering(worker, time.monotonic(), seconds)


def _through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's (credentials kept)."""
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


def _run(app: Any, worker: Worker, queue: str, count: int, total: int, *, what: str,
         timeout: float = 30) -> float:
    """Send ``count`` tasks; seconds until the worker has counted ``total`` successes."""
    sent = time.monotonic()
    for i in range(count):
        app.send_task("tests.ok", args=(i,), queue=queue)
    wait_for(lambda: _succeeded(worker) == total, timeout,
             what=lambda: f"{what}\n{worker.log_text()[-3000:]}")
    return time.monotonic() - sent


def test_a_worker_behind_latency_a_bandwidth_limit_a_hang_and_a_reset_counts_every_task_once(
    redis_url: str, queue: str, toxiproxy: Toxiproxy
) -> None:
    proxy = toxiproxy.proxy("worker-redis", urlsplit(redis_url).port or 6379)
    through = _through(redis_url, proxy.port)
    app = producer(redis_url)
    worker = Worker(through, queue, concurrency=2,
                    env={"TEST_CELERY_CONF": json.dumps(
                        {"broker_transport_options": WORKER_TRANSPORT_OPTIONS})})
    try:
        worker.wait_ready()

        def run(count: int, total: int, what: str, timeout: float = 30) -> float:
            return _run(app, worker, queue, count, total, what=what, timeout=timeout)

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
        kombu = "not measured: kombu's (`socket_timeout`, `health_check_interval`)"
        for fault, detected, ran in (
            ("500 ms latency both ways", "not an outage", f"under it: {slow:.1f}"),
            ("8 KB/s both ways", "not an outage", f"under it: {narrow:.1f}"),
            ("hang (6 s)", kombu, f"after it: {recovered:.1f}"),
            ("reset", kombu, f"after it: {after_reset:.1f}"),
        ):
            record(fault, "instrumented prefork worker → Redis", detected,
                   f"{ran} s for 5 tasks", "nothing")
        print(f"worker: 5 tasks took {slow:.1f}s under latency, {narrow:.1f}s through 8 KB/s, "
              f"{recovered:.1f}s after the hang, {after_reset:.1f}s after the reset")
    finally:
        worker.stop()


def _noticed_while_answering(worker: Worker, since: float, seconds: float) -> float:
    """Seconds from ``since`` to the worker's first lost-connection line, while its /metrics
    answers quickly every 0.25 s until ``seconds`` after ``since`` (one clock for both)."""
    noticed = _answering(worker, since, seconds)
    assert noticed is not None, f"a {seconds} s hang went unnoticed\n{worker.log_text()[-3000:]}"
    return noticed


def test_a_worker_behind_the_same_faults_to_rabbitmq_notices_them_and_counts_every_task_once(
    rabbitmq_url: str, queue: str, toxiproxy: Toxiproxy
) -> None:
    proxy = toxiproxy.proxy("worker-rabbitmq", urlsplit(rabbitmq_url).port or 5672)
    through = _through(rabbitmq_url, proxy.port)
    app = producer(rabbitmq_url)
    worker = Worker(through, queue, concurrency=2,
                    env={"TEST_CELERY_CONF": json.dumps(
                        {"broker_heartbeat": WORKER_AMQP_HEARTBEAT})})
    try:
        worker.wait_ready()

        def run(count: int, total: int, what: str, timeout: float = 30) -> float:
            return _run(app, worker, queue, count, total, what=what, timeout=timeout)

        def lost_after(started: float, seen: int, timeout: float) -> float:
            """Seconds from ``started`` until the worker logs one more lost connection."""
            wait_for(lambda: worker.log_text().count(LOST) > seen, timeout,
                     what=lambda: f"the worker to notice\n{worker.log_text()[-3000:]}")
            return time.monotonic() - started

        run(5, 5, "five tasks")

        proxy.latency(500)
        slow = run(5, 10, "five tasks under 500 ms of latency")
        proxy.cure()

        proxy.bandwidth(8)
        narrow = run(5, 15, "five tasks through 8 KB/s")
        proxy.cure()
        # Latency and the bandwidth limit are not outages: the heartbeat kept the connection.
        assert LOST not in worker.log_text()

        hung = time.monotonic()
        proxy.hang()
        hang_detected = _noticed_while_answering(worker, hung, 6)
        assert _succeeded(worker) == 15
        proxy.cure()
        recovered = run(5, 20, "five tasks after the hang", timeout=60)

        seen = worker.log_text().count(LOST)
        reset = time.monotonic()
        proxy.reset()
        reset_detected = lost_after(reset, seen, 20)
        _answers_throughout(worker, 1)
        proxy.cure()
        after_reset = run(5, 25, "five tasks after the reset", timeout=60)

        samples = worker.samples()
        assert value(samples, "celery_tasks_total") == 25
        assert value(samples, "celery_task_runtime_seconds_count") == 25
        assert value(samples, "celery_tasks_received_total") == 25
        assert worker.proc.poll() is None
        heartbeat = f"`broker_heartbeat={WORKER_AMQP_HEARTBEAT}`"
        component = "instrumented prefork worker → RabbitMQ"
        for fault, detected, ran in (
            (f"500 ms latency both ways, {heartbeat}", "not an outage (connection kept)",
             f"under it: {slow:.1f}"),
            (f"8 KB/s both ways, {heartbeat}", "not an outage (connection kept)",
             f"under it: {narrow:.1f}"),
            (f"half-open hang (6 s, no FIN/RST), {heartbeat}",
             f"{hang_detected:.1f} s (`Connection to broker lost`)", f"after it: {recovered:.1f}"),
            ("reset (RST on every connection, and on new ones while it lasts)",
             f"{reset_detected:.1f} s (`Connection to broker lost`)",
             f"after it: {after_reset:.1f}"),
        ):
            record(fault, component, detected, f"{ran} s for 5 tasks", "nothing")
        print(f"worker → RabbitMQ: 5 tasks took {slow:.1f}s under latency, {narrow:.1f}s "
              f"through 8 KB/s; hang noticed after {hang_detected:.1f}s, 5 tasks "
              f"{recovered:.1f}s after it; reset noticed after {reset_detected:.1f}s, 5 tasks "
              f"{after_reset:.1f}s after it")
    finally:
        worker.stop()
