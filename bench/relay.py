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

3. Relayed spans (``--spans``, 0 to skip): CPU of the whole main process per span a child
   relayed (decoding the datagram, the worker's ``BatchSpanProcessor`` and its OTLP/HTTP
   exporter, every thread, to a receiver in another process), and the child's CPU per
   span (encoding and ``marshal``), for both span formats, alternating in one run:
   ``rebuilt`` (plain tuples, rebuilt as ``ReadableSpan`` s and encoded by the main
   process: the previous design, still the path for other processors) and ``otlp``
   (encoded in the child, batched as bytes). Every span must arrive. Target: main <= 30 µs.

4. The child's reader (``--readers``): a task's recording followed by a collection and
   the relay's encoding, with the delta reader the relay uses and with a cumulative
   reader (what a "cumulative reader diffed by us" design would start from, before any
   diffing), alternating in one run: where a send's time goes and whether that design
   would be cheaper.

    python bench/relay.py [--tasks 20000] [--rounds 5] [--series 1000] [--spans 5000]
    python bench/relay.py --only-spans --spans 5000 --rounds 5   # part 3 alone
    python bench/relay.py --only-readers --rounds 5              # part 4 alone
"""

from __future__ import annotations

import argparse
import contextlib
import marshal
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest

from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.child_forwarder import ChildForwarder
from otel_celery_metrics.pool.relay import PoolRelay
from otel_celery_metrics.pool.relay_store import RelayStore
from otel_celery_metrics.sdk_adapter import SdkAdapter

BUCKETS = [0.01, 0.1, 1.0, 10.0, 100.0]


class _Adapter:
    """Stands in for the main process' SDK adapter: one hooked reader (relay on)."""

    is_sdk = True

    def add_relayed(self, _produce: Any) -> int:
        return 1


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
    relay.attach(_Adapter())  # type: ignore[arg-type]  # as before the fork
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
    # The main process' readers, hooked as the instrumentor hooks them.
    adapter = SdkAdapter(main, "bench", "0")
    adapter.apply(lambda _reset: [], lambda: None, contextlib.nullcontext, scope_labels=False)
    if relay.attach(adapter) != 1:
        msg = "the relay is not attached to the main process' reader"
        raise SystemExit(msg)
    for child in range(4):
        collected: list[Any] = []
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        outbox = _ListOutbox()
        child_relay = PoolRelay(provider, FailureLog(), count=lambda *_: None,
                                skip_scopes=frozenset(), interval=3600)
        child_relay.attach(_Adapter())  # type: ignore[arg-type]  # as before the fork
        child_relay.start_in_child(outbox)
        c, h = _instruments(provider)
        for i in range(child, series, 4):
            c.add(1, {"customer": f"c{i}"})
            h.record(float(i % 50), {"customer": f"c{i}"})
        child_relay.collect_and_send()
        relay.receive(outbox.entries)
        del collected
    rendered = generate_latest(main_registry).decode()
    if rendered.count("billing_invoices_total{") != series:
        msg = "the relayed series are not all on the main process' /metrics"
        raise SystemExit(msg)
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


_RECEIVER = """
import sys
sys.path.insert(0, sys.argv[1])
from tests.otlp_receiver import OtlpHttpReceiver
receiver = OtlpHttpReceiver().start()
print(receiver.endpoint, flush=True)
for _line in sys.stdin:
    print(len(receiver.received.spans()), flush=True)
"""


def _task_spans(n: int, resource_: Any) -> list[Any]:
    """``n`` ended spans shaped like opentelemetry-instrumentation-celery's ``run/<task>``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    spans: list[Any] = []

    class Keep(SpanExporter):
        def export(self, batch: Any) -> SpanExportResult:
            spans.extend(batch)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=resource_)
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("opentelemetry.instrumentation.celery", "0.66b2")
    for i in range(n):
        with tracer.start_as_current_span("run/bench.noop", attributes={
            "celery.action": "run", "celery.state": "SUCCESS",
            "messaging.message.id": f"{i:036d}", "celery.task_name": "bench.noop",
            "messaging.destination": "bench", "celery.hostname": "celery@bench",
            "celery.delivery_info": "{'exchange': '', 'routing_key': 'bench'}",
        }):
            pass
    return spans


def _span_receiver() -> tuple[str, Callable[[], int], Callable[[], None]]:
    """An OTLP/HTTP receiver in another process (its CPU is not the main process')."""
    repo = str(Path(__file__).resolve().parent.parent)
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, repo], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    assert receiver.stdin is not None and receiver.stdout is not None
    stdin, stdout = receiver.stdin, receiver.stdout
    endpoint = stdout.readline().strip()

    def arrived() -> int:
        stdin.write("\n")
        stdin.flush()
        return int(stdout.readline())

    def close() -> None:
        stdin.close()
        receiver.wait(10)

    return endpoint, arrived, close


def _main_cpu_per_span(endpoint: str, res: Any, datagrams: list[bytes], n: int,
                       encoded: bool) -> float:
    """The main process' CPU (all threads) per relayed span, until the exporter sent all."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=res)
    # The default batch (512) and delay; a queue for every span, as they come faster
    # here than at a worker's task rate.
    provider.add_span_processor(BatchSpanProcessor(
        OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"), max_queue_size=n))
    relay = PoolRelay(SdkMeterProvider(), FailureLog(), count=lambda *_: None,
                      skip_scopes=frozenset(), tracer_provider=lambda: provider,
                      encoded_spans=encoded)
    relay.before_first_fork()
    start = resource.getrusage(resource.RUSAGE_SELF)
    for data in datagrams:
        _dropped, batch = marshal.loads(data)  # noqa: S302 - our own bytes
        relay.receive(batch)
    provider.force_flush()
    end = resource.getrusage(resource.RUSAGE_SELF)
    relay.detach()
    provider.shutdown()
    spent = end.ru_utime - start.ru_utime + end.ru_stime - start.ru_stime
    return spent / n * 1e6


def relayed_spans(n: int, rounds: int) -> None:
    from opentelemetry.sdk.resources import Resource

    from otel_celery_metrics.pool.codec import SPAN_ENTRY, SPAN_OTLP_ENTRY, encode_span
    from otel_celery_metrics.sdk_adapter.span_export import child_span_encoder

    endpoint, arrived, close = _span_receiver()
    res = Resource.create({"service.name": "bench-worker", "service.instance.id": "0" * 36})
    spans = _task_spans(n, res)
    encode_otlp = child_span_encoder()
    assert encode_otlp is not None
    formats: dict[str, Callable[[Any], tuple[Any, ...]]] = {
        "rebuilt": lambda span: (SPAN_ENTRY, encode_span(span)),
        "otlp": lambda span: (SPAN_OTLP_ENTRY, *encode_otlp(span)),
    }
    main_us: dict[str, list[float]] = {f: [] for f in formats}
    child_us: dict[str, list[float]] = {f: [] for f in formats}
    for r in range(rounds):
        for name in (list(formats) if r % 2 == 0 else list(reversed(formats))):
            encode = formats[name]
            start = time.thread_time()
            entries = [encode(span) for span in spans]
            datagrams = [marshal.dumps((0, entries[i:i + 16]), 4) for i in range(0, n, 16)]
            child_us[name].append((time.thread_time() - start) / n * 1e6)
            before = arrived()
            main_us[name].append(_main_cpu_per_span(endpoint, res, datagrams, n,
                                                    encoded=name == "otlp"))
            got = arrived() - before
            if got != n:
                msg = f"{name}: {got} of {n} relayed spans arrived"
                raise SystemExit(msg)
    close()
    base = statistics.median(main_us["rebuilt"])
    print(f"\nRelayed spans (N = {n} per round, {rounds} alternating rounds, medians; "
          "every span arrived):")
    print("| span format | main process µs/span | ratio | child µs/span |")
    print("| --- | ---: | ---: | ---: |")
    for name in formats:
        med = statistics.median(main_us[name])
        print(f"| {name} | {med:.1f} | {med / base:.2f} | "
              f"{statistics.median(child_us[name]):.1f} |")
    print("per round, main:", {k: [round(v, 1) for v in vs] for k, vs in main_us.items()})


def _reader_costs(delta: bool, n: int) -> tuple[float, float, float]:
    """µs per task of recording, of the SDK's collection, of the relay's encoding."""
    from opentelemetry.sdk.metrics import Counter, Histogram
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    from otel_celery_metrics.pool.codec import encode_metrics

    wanted = AggregationTemporality.DELTA
    reader = InMemoryMetricReader(
        preferred_temporality={Counter: wanted, Histogram: wanted} if delta else {})
    counter, histogram = _instruments(MeterProvider(metric_readers=[reader]))
    attrs = [{"plan": p} for p in ("free", "pro", "team")]
    for a in attrs:  # every series exists, as in a child that has run a few tasks
        counter.add(1, a)
        histogram.record(1.0, a)
    reader.get_metrics_data()
    record = collect = encode = 0.0
    for i in range(n):
        a = attrs[i % 3]
        t0 = time.thread_time()
        counter.add(1, a)
        histogram.record(float(i % 50), a)
        t1 = time.thread_time()
        data = reader.get_metrics_data()
        t2 = time.thread_time()
        points, _ = encode_metrics(data, frozenset())
        marshal.dumps(points, 4)
        t3 = time.thread_time()
        record, collect, encode = record + t1 - t0, collect + t2 - t1, encode + t3 - t2
    return record / n * 1e6, collect / n * 1e6, encode / n * 1e6


def child_readers(n: int, rounds: int) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {"delta": [], "cumulative": []}
    for r in range(rounds):
        for name in (("delta", "cumulative") if r % 2 == 0 else ("cumulative", "delta")):
            results[name].append(_reader_costs(name == "delta", n))
    print(f"\nChild reader, a collection after every task (N = {n}, {rounds} alternating "
          "rounds, medians, µs of CPU per task; 3 attribute sets, one changes per task):")
    print("| reader | record | SDK collection | encode + marshal | total |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, rows in results.items():
        rec, col, enc = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"| {name} | {rec:.1f} | {col:.1f} | {enc:.1f} | {rec + col + enc:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--sends", type=int, nargs="+", default=[0, 1, 10, 100],
                        help="relay sends every K tasks (0: never)")
    parser.add_argument("--spans", type=int, default=5000,
                        help="relayed spans per round (0: skip that part)")
    parser.add_argument("--only-spans", action="store_true", help="part 3 alone")
    parser.add_argument("--only-readers", action="store_true", help="part 4 alone")
    args = parser.parse_args()
    everything = not (args.only_spans or args.only_readers)
    if everything:
        per_task(args.tasks, args.rounds, args.sends)
        render(args.series, max(args.rounds, 7))
    if args.spans and (everything or args.only_spans):
        relayed_spans(args.spans, args.rounds)
    if everything or args.only_readers:
        child_readers(min(args.tasks, 5000), args.rounds)


if __name__ == "__main__":
    main()
