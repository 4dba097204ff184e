"""Where a pool child's and the drain's time goes, piece by piece (issue 3's profiling).

Micro-timings of the parts of our pool-child path and of the drain, in one process tree
like ``inprocess_overhead.py``'s ``ours_child`` mode: our instrumentor on an SDK
MeterProvider with a Prometheus reader, a fork, the child forwarding to the parent's
real drain thread. Reaches into private attributes (``_wiring``, ``_forwarder``): it
is a profiling aid, not a test, and may need updating when the package changes.

    /work/venv/bin/python bench/child_breakdown.py [--n 50000]
"""

from __future__ import annotations

import argparse
import marshal
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import inprocess_overhead as bench


def _time(label: str, fn: Callable[[], Any], n: int) -> None:
    fn()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        fn()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(f"  {label:52s} cpu {cpu / n * 1e6:6.2f} us  wall {wall / n * 1e6:6.2f} us", flush=True)


def _child_part(wiring: Any, task: Any, n: int) -> None:
    from celery.app.task import Context

    from otel_celery_metrics import _receivers

    receivers, forwarder = wiring.receivers, wiring.bridge._forwarder
    request = bench._base_request()
    request["id"] = "t-1"
    task.request_stack.push(Context(request))
    print("pool child: receivers (flush disabled)")
    real_flush = wiring.sink.flush
    wiring.sink.flush = lambda: None
    _time("on_prerun", lambda: receivers.on_prerun(task_id="t-1", task=task), n)
    forwarder._pending = []

    def pre_post() -> None:
        receivers.on_prerun(task_id="t-1", task=task)
        receivers.on_postrun(task_id="t-1", task=task, state="SUCCESS")
        forwarder._pending = []

    _time("on_prerun + on_postrun", pre_post, n)
    wiring.sink.flush = real_flush
    _time("  task.request (thread-local stack)", lambda: task.request, n)
    _time("  queue_of_request", lambda: _receivers.queue_of_request(task.request, "x"), n)
    _time("  _wait_reference", lambda: receivers._wait_reference(task.request), n)
    _time("  _sampled_span", _receivers._sampled_span, n)
    batch = [
        (5, 0.1, ("bench.noop", "celery", "received")),
        (1, 1e-5, ("bench.noop", "celery")),
        (0, 1, ("bench.noop", "celery", "SUCCESS")),
    ]
    print("pool child: getting 3 measurements out")
    _time("marshal.dumps of one task's 3 measurements", lambda: marshal.dumps((0, batch), 4), n)
    real_sock = forwarder._sock
    sends = {"ok": 0, "refused": 0}

    class CountingSocket:
        def send(self, payload: bytes, flags: int = 0) -> int:
            try:
                sent = real_sock.send(payload, flags)
            except BlockingIOError:
                sends["refused"] += 1
                raise
            sends["ok"] += 1
            return int(sent)

        def settimeout(self, timeout: float) -> None:
            real_sock.settimeout(timeout)

    forwarder._sock = CountingSocket()

    def emit_and_flush() -> None:
        for measurement in batch:
            forwarder.emit(*measurement)
        forwarder.flush()

    _time("emit x3 + flush, back to back (real drain thread)", emit_and_flush, n)
    print(f"    sends accepted {sends['ok']}, refused (queue full) {sends['refused']}")
    forwarder.final_flush()


def _drain_part(wiring: Any, n: int) -> None:
    recorder, bridge = wiring.recorder, wiring.bridge
    batch = [
        (5, 0.1, ("bench.noop", "celery", "received")),
        (1, 1e-5, ("bench.noop", "celery")),
        (0, 1, ("bench.noop", "celery", "SUCCESS")),
    ]
    payload = marshal.dumps((0, batch), 4)
    print("main process: drain, per datagram of one task's 3 measurements")
    _time("marshal.loads", lambda: marshal.loads(payload), n)  # noqa: S302 - our own bytes
    _time("_decode (loads + 3 Recorder.emit)", lambda: bridge._decode(payload), n)
    _time("  Recorder.emit, counter", lambda: recorder.emit(0, 1, batch[2][2]), n)
    _time("  Recorder.emit, histogram", lambda: recorder.emit(1, 1e-5, batch[1][2]), n)
    provider, _ = bench._sdk_provider()
    meter = provider.get_meter("breakdown")
    counter, histogram = meter.create_counter("c"), meter.create_histogram("h")
    attrs3 = {"task_name": "bench.noop", "queue": "celery", "state": "SUCCESS"}
    attrs2 = {"task_name": "bench.noop", "queue": "celery"}
    _time("  SDK Counter.add alone", lambda: counter.add(1, attrs3), n)
    _time("  SDK Histogram.record alone", lambda: histogram.record(1e-5, attrs2), n)
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    pc = Counter("c", "c", ["task_name", "queue", "state"], registry=registry)
    ph = Histogram("h", "h", ["task_name", "queue"], registry=registry)
    print("for comparison: the recipe's two operations")
    _time("prometheus_client Counter.labels().inc()", lambda: pc.labels("n", "q", "S").inc(), n)
    _time("prometheus_client Histogram.labels().observe()",
          lambda: ph.labels("n", "q").observe(1e-5), n)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    args = parser.parse_args()
    from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor

    task = bench._make_task()
    provider, _ = bench._sdk_provider()
    bench._instrument_ours(provider)
    wiring = CeleryMetricsInstrumentor()._wiring
    pid = os.fork()  # our before-fork hook starts the socketpair and the drain thread
    if pid == 0:
        try:
            from celery import signals

            signals.worker_process_init.send(sender=None)  # as Celery's pool does
            _child_part(wiring, task, args.n)
        finally:
            sys.stdout.flush()
            os._exit(0)
    os.waitpid(pid, 0)
    _drain_part(wiring, args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
