"""Network faults between an instrumented prefork worker and the real Collector (OTLP).

The worker (``-c 2``) exports OTLP/HTTP every :data:`INTERVAL_MS` through a Toxiproxy
proxy in front of the real Collector (tools/otelcol-celery, the shipped
collector-config.yaml); its broker connection is direct. :func:`run_faults` puts each
fault on the proxy in turn while tasks run, removes it, and measures, per fault:

- *detected after*: from the fault to the worker's first ``Failed to export metrics
  batch`` line (the one line per failed export; ``None`` when no export failed);
- *recovered after*: from the cure to the Collector's prometheus exporter (what
  Prometheus scrapes) serving the exact total of tasks that succeeded so far;
- *lost*: tasks that succeeded minus what the Collector serves once recovered. Metrics
  are cumulative, so the first export that gets through carries every count made
  during the fault: this is 0 unless something is really lost.

Used by tests/integration/test_collector_network_faults.py (which asserts) and
bench/fault_matrix.py (which prints the figures).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from tests.otlp_receiver import OtlpGrpcReceiver, otlp_env
from tests.servers import Collector, running_collector
from tests.support import Worker, parse, producer, running_worker, value, wait_for
from tests.toxiproxy import Proxy, Toxiproxy

INTERVAL_MS = 500
#: The SDK's export timeout (seconds): a hung Collector costs each export this, never a task.
EXPORT_TIMEOUT_S = 2
#: How long the half-open hang lasts: several export intervals and longer than the timeout.
HANG_S = 4.0
#: The bandwidth limit, KB/s each way.
BANDWIDTH_KBPS = 4
FAILED_EXPORT = re.compile(r"ERROR/MainProcess\] Failed to export metrics batch")
TASKS_PER_FAULT = 10


@dataclass
class Outcome:
    """What one fault did to the OTLP path."""

    fault: str
    detected_after: float | None
    recovered_after: float
    lost: int
    tasks: int
    worker_alive: bool


def _succeeded(worker: Worker) -> int:
    return worker.log_text().count(" succeeded in ")


def _failed_exports(worker: Worker) -> int:
    return sum(1 for line in worker.log_text().splitlines() if FAILED_EXPORT.search(line))


def served_total(collector: Collector, queue: str) -> float:
    """SUCCESS tasks of ``queue`` the Collector's prometheus exporter serves."""
    return value(parse(collector.metrics_text()), "celery_tasks_total", queue=queue,
                 state="SUCCESS")


class _Run:
    def __init__(self, worker: Worker, collector: Collector, proxy: Proxy, queue: str,
                 app: object) -> None:
        self.worker = worker
        self.collector = collector
        self.proxy = proxy
        self.queue = queue
        self.app = app
        self.sent = 0

    def send(self, count: int) -> None:
        for i in range(count):
            self.app.send_task("tests.ok", args=(i,), queue=self.queue)  # type: ignore[attr-defined]
        self.sent += count
        wait_for(lambda: _succeeded(self.worker) >= self.sent, 30,
                 what=lambda: f"{self.sent} tasks succeed\n{self.worker.log_text()[-2000:]}")

    def exact(self, timeout: float = 30) -> None:
        wait_for(lambda: served_total(self.collector, self.queue) == self.sent, timeout,
                 what=lambda: (f"the Collector serving {self.sent} tasks (has "
                               f"{served_total(self.collector, self.queue)})\n"
                               f"{self.worker.log_text()[-2000:]}"))

    def fault(self, name: str, apply: object, hold: float) -> Outcome:
        failed_before = _failed_exports(self.worker)
        apply()  # type: ignore[operator]
        started = time.monotonic()
        detected: float | None = None
        # Tasks run during the fault; the fault lasts at least ``hold``.
        self.send(TASKS_PER_FAULT)
        while time.monotonic() - started < hold:
            if detected is None and _failed_exports(self.worker) > failed_before:
                detected = time.monotonic() - started
            time.sleep(0.05)
        if detected is None and _failed_exports(self.worker) > failed_before:
            # Seen only now: bounded by the hold, not measured to the 0.05 s.
            detected = time.monotonic() - started
        self.proxy.cure()
        cured = time.monotonic()
        # A slow but working path has to deliver under the fault: wait for that too.
        self.exact(timeout=30)
        recovered = time.monotonic() - cured
        lost = self.sent - int(served_total(self.collector, self.queue))
        return Outcome(name, detected, recovered, lost, self.sent,
                       self.worker.proc.poll() is None)


def run_faults(redis_url: str, queue: str, workdir: Path) -> list[Outcome]:
    """Every fault in turn, each followed by recovery; one :class:`Outcome` per fault."""
    toxiproxy = Toxiproxy()
    try:
        with OtlpGrpcReceiver() as sink, \
                running_collector(workdir / "otelcol", f"127.0.0.1:{sink.port}") as collector:
            proxy = toxiproxy.proxy("worker-collector", collector.http_port)
            env = otlp_env(f"http://127.0.0.1:{proxy.port}", interval_ms=INTERVAL_MS,
                           OTEL_EXPORTER_OTLP_TIMEOUT=str(EXPORT_TIMEOUT_S),
                           OTEL_TRACES_EXPORTER="none")
            with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                                env=env) as worker:
                run = _Run(worker, collector, proxy, queue, producer(redis_url))
                run.send(TASKS_PER_FAULT)
                run.exact()
                interval = INTERVAL_MS / 1000
                return [
                    run.fault("latency 500 ms both ways", lambda: proxy.latency(500),
                              hold=4 * interval),
                    run.fault(f"bandwidth {BANDWIDTH_KBPS} KB/s both ways",
                              lambda: proxy.bandwidth(BANDWIDTH_KBPS), hold=4 * interval),
                    run.fault("reset (RST on every connection)", proxy.reset,
                              hold=4 * interval),
                    run.fault(f"half-open hang {HANG_S:.0f} s (bytes stop, no FIN/RST)",
                              proxy.hang, hold=HANG_S),
                ]
    finally:
        toxiproxy.stop()
