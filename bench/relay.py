"""The pool-child relay's cost, side by side with its baselines in one run.

1. Per task in a pool child: a task that adds to one application counter and records one
   histogram point through the OpenTelemetry API.

   (a) ``solo``: the same task in a solo worker's process: one SDK MeterProvider with one
       cumulative reader (the Prometheus reader's storage), no relay;
   (b) ``relay``: a forked-child setup as :class:`~otel_celery_metrics.pool.relay.PoolRelay`
       builds it (the relay's delta reader replaces the inherited one), measured with
       the relay's collect + encode + send after every K tasks (``--sends``; 0: never,
       the recording alone; 1 is the worst case, a child recycled after every task
       pays one collection per task at exit; with the default 1 s interval a busy
       child sends once per second, i.e. every K = its tasks per second);
   (c) ``idle relay tick``: what one relay tick costs a child that recorded nothing
       (it collects nothing and sends nothing; nothing at all runs per task).

   Reports medians of ``--rounds`` alternating rounds, microseconds of CPU per task,
   and the relay's extra over (a). Target: <= 5 us per task.

2. ``/metrics`` render time in the main process with ``--series`` application series
   (counter + histogram) recorded by 4 children and merged by the relay, vs the same
   series recorded in the main process itself. Target: <= 1.2x.

    python bench/relay.py [--tasks 20000] [--rounds 5] [--series 1000]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.child_forwarder import ChildForwarder
from otel_celery_metrics.pool.relay import PoolRelay
from otel_celery_metrics.pool.relay_store import RelayStore

BUCKETS = [0.01, 0.1, 1.0, 10.0, 100.0]


def _instruments(provider: MeterProvider) -> tuple[Any, Any]:
    meter = provider.get_meter("billing")
    return (meter.create_counter("billing.invoices"),
            meter.create_histogram("billing.amount", explicit_bucket_boundaries_advisory=BUCKETS))


def _cpu_per_task(task: Callable[[int], None], n: int, after: Callable[[int], bool],
                  drain: Callable[[], None] = lambda: None) -> float:
    """CPU of this thread per task, the main process' reading (``drain``) left out."""
    spent = 0.0
    for i in range(n):
        start = time.thread_time()
        task(i)
        sent = after(i)
        spent += time.thread_time() - start
        if sent:
            drain()
    return spent / n * 1e6


def _drainer(sock: socket.socket) -> Callable[[], None]:
    """The main process' end, read right away so that no send is ever refused."""

    def drain() -> None:
        while True:
            try:
                sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return

    return drain


def _relay_child(tasks_per_send: int) -> tuple[
    Callable[[int], None], Callable[[int], bool], Callable[[], None], Callable[[], None]
]:
    inherited = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[inherited])
    counter, histogram = _instruments(provider)
    receive_end, send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    failures = FailureLog()
    forwarder = ChildForwarder(send_end, failures, max_pending=50_000,
                                retry_in_background=False)
    relay = PoolRelay(provider, failures, count=lambda *_: None,
                      skip_scopes=frozenset(), interval=3600)
    relay.attach()  # as in the main process before the fork
    relay.start_in_child(forwarder)
    attrs = [{"plan": p} for p in ("free", "pro", "team")]

    def task(i: int) -> None:
        a = attrs[i % 3]
        counter.add(1, a)
        histogram.record(float(i % 50), a)

    def after(i: int) -> bool:
        if (i + 1) % tasks_per_send == 0:
            relay.collect_and_send()
            if forwarder.pending:
                msg = "a send was refused: the figure would not be the send's cost"
                raise RuntimeError(msg)
            return True
        return False

    def close() -> None:
        receive_end.close()
        send_end.close()

    return task, after, _drainer(receive_end), close


def _solo() -> Callable[[int], None]:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    counter, histogram = _instruments(provider)
    attrs = [{"plan": p} for p in ("free", "pro", "team")]

    def task(i: int) -> None:
        a = attrs[i % 3]
        counter.add(1, a)
        histogram.record(float(i % 50), a)

    return task


def per_task(n: int, rounds: int, sends: list[int]) -> None:
    modes = ["solo", *(f"relay, send every {k} tasks" if k else "relay, no send" for k in sends)]
    results: dict[str, list[float]] = {mode: [] for mode in [*modes, "idle relay tick"]}
    for _ in range(rounds):
        results["solo"].append(_cpu_per_task(_solo(), n, lambda _i: False))
        for k, mode in zip(sends, modes[1:], strict=True):
            task, after, drain, close = _relay_child(k or n + 1)
            results[mode].append(_cpu_per_task(task, n, after, drain))
            close()
        # A child that records nothing: each relay tick (1 s by default) collects
        # nothing and sends nothing. Nothing at all runs per task.
        _task, after, drain, close = _relay_child(1)
        results["idle relay tick"].append(_cpu_per_task(lambda _i: None, n, after, drain))
        close()
    base = statistics.median(results["solo"])
    print(f"Per task, µs of CPU (N = {n}, {rounds} alternating rounds, medians):")
    print("| mode | µs/task | relay's extra over solo |\n| --- | ---: | ---: |")
    for mode, values in results.items():
        med = statistics.median(values)
        if mode == "idle relay tick":
            print(f"| {mode} (µs per tick, not per task) | {med:.2f} | — |")
            continue
        print(f"| {mode} | {med:.2f} | {'—' if mode == 'solo' else f'{med - base:+.2f}'} |")


def _render_seconds(registry: CollectorRegistry, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def render(series: int, rounds: int) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader

    # One process records every series itself.
    one_registry = CollectorRegistry()
    one = MeterProvider(metric_readers=[PrometheusMetricReader(registry=one_registry)])
    counter, histogram = _instruments(one)
    for i in range(series):
        counter.add(1, {"customer": f"c{i}"})
        histogram.record(float(i % 50), {"customer": f"c{i}"})

    # The main process of a worker whose 4 children recorded them (the relay merges).
    main_registry = CollectorRegistry()
    main = MeterProvider(metric_readers=[PrometheusMetricReader(registry=main_registry)])
    store = RelayStore()
    relay = PoolRelay(main, FailureLog(), count=lambda *_: None, skip_scopes=frozenset(),
                      store=store)
    relay.attach()
    for child in range(4):
        collected: list[Any] = []
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        outbox = _ListOutbox()
        child_relay = PoolRelay(provider, FailureLog(), count=lambda *_: None,
                                skip_scopes=frozenset(), interval=3600)
        child_relay.attach()  # as in the main process before the fork
        child_relay.start_in_child(outbox)
        c, h = _instruments(provider)
        for i in range(child, series, 4):
            c.add(1, {"customer": f"c{i}"})
            h.record(float(i % 50), {"customer": f"c{i}"})
        child_relay.collect_and_send()
        relay.receive(outbox.entries)
        del collected
    # Alternating, so that the other load on the machine hits both alike.
    one_times, relayed_times = [], []
    for _ in range(rounds):
        one_times.append(_render_seconds(one_registry, 1))
        relayed_times.append(_render_seconds(main_registry, 1))
    one_s, relayed_s = statistics.median(one_times), statistics.median(relayed_times)
    print(f"\n/metrics render, {series} series of a counter and a histogram ({rounds} "
          "alternating rounds, medians):")
    print("| recorded in | ms | ratio |\n| --- | ---: | ---: |")
    print(f"| one process | {one_s * 1e3:.2f} | 1 |")
    print(f"| 4 children, relayed | {relayed_s * 1e3:.2f} | {relayed_s / one_s:.2f} |")


class _ListOutbox:
    def __init__(self) -> None:
        self.entries: list[Any] = []

    @property
    def pending(self) -> int:
        return 0

    def extend(self, entries: list[Any]) -> None:
        self.entries.extend(entries)

    def flush(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--sends", type=int, nargs="+", default=[0, 1, 10, 100],
                        help="relay sends every K tasks (0: never)")
    args = parser.parse_args()
    per_task(args.tasks, args.rounds, args.sends)
    render(args.series, max(args.rounds, 7))


if __name__ == "__main__":
    main()
