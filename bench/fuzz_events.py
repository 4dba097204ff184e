"""Fuzz the standalone exporter's event path with atheris (coverage-guided): bytes from the
event bus -> RESP pub/sub parser -> kombu envelope -> event handlers -> exposition.

Not run in CI: a benchmark-style script, run for a fixed time, that prints (and with
``--record`` appends to bench/FUZZ.md) executions, duration, corpus size, memory and the
verdict. It fails (non-zero exit, the input saved by libFuzzer as ``crash-*``) on:

- an exception escaping the pipeline the receiver runs (the receiver only expects
  ``ProtocolError``/``ValueError`` from the parser and ``UndecodableEvent`` from decoding);
- an event handler's internal error (``handle()`` contains it and counts it as
  ``internal_error``; here any ERROR log of the exporter is a finding);
- a hang (libFuzzer ``-timeout``, default 10 s per input);
- an exposition that prometheus_client's parser rejects, or with a sample value that is not
  finite (``+Inf``, ``NaN``: a poisoned series), every ``--check-every`` inputs,
  or that ``promtool check metrics`` rejects (every ``--promtool-every`` seconds and at the end);
- unbounded memory: RSS must not grow by more than ``--max-growth-mb`` between the end of the
  first quarter of the run and the end.

Inputs are structure-aware: the first byte picks raw chunks for the parser, a fuzzed
payload in a valid pub/sub message, a fuzzed JSON body in a valid envelope, or an event of
a real type with fuzzed field values (most coverage of the handlers comes from these).
State accumulates across inputs, as in a long-running exporter, under a fake clock that
inputs advance, with the periodic upkeep (expiry, rebuilds) run every 100 inputs.

    pip install atheris        # not a dependency of the package or its tests
    python bench/fuzz_events.py --seconds 600 --record
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

EVENT_TYPES = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-rejected", "task-revoked", "task-cancelled", "worker-online",
    "worker-heartbeat", "worker-offline",
)
FIELDS = (
    "uuid", "hostname", "name", "queue", "routing_key", "exchange", "timestamp", "local_received",
    "runtime", "exception", "eta", "expires", "retries", "freq", "active", "processed",
    "clock", "utcoffset", "pid", "sw_ident", "sw_ver", "sw_sys", "loadavg", "args", "kwargs",
    "result", "traceback", "requeue", "signum", "terminated", "expired", "priority", "sent_at",
)


class Findings(logging.Handler):
    """ERROR records of our loggers: a handler's contained internal error is a finding."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Pipeline:
    """The exporter as the receiver drives it, minus the socket and the threads."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        from otel_celery_metrics.exporter.config import ExporterConfig
        from otel_celery_metrics.exporter.service import Exporter

        self.now = 1_000_000.0
        config = ExporterConfig(broker_url="redis://127.0.0.1:1/0", worker_timeout=5,
                                worker_forget_after=30, max_tracked_tasks=5_000)
        self.registry = CollectorRegistry()
        self.exporter = Exporter(config, registry=self.registry, clock=lambda: self.now)
        from otel_celery_metrics.exporter._wire import PubSubParser

        self.parser = PubSubParser()
        self.inputs = 0

    def feed(self, chunks: list[bytes]) -> None:
        from otel_celery_metrics.exporter._wire import (
            ProtocolError,
            UndecodableEvent,
            decode_envelope,
        )

        # Each input is a new stream (as after a reconnect, when the receiver resets the
        # parser): a partial message left by one input would otherwise swallow the next
        # ones and make every later input re-parse an ever longer buffer.
        self.parser.reset()
        for chunk in chunks:
            try:
                payloads = self.parser.feed(chunk)
            except (ProtocolError, ValueError):
                self.parser.reset()  # as the receiver does: count, resync, go on
                continue
            for payload in payloads:
                try:
                    events = decode_envelope(payload)
                except UndecodableEvent:
                    continue
                for event in events:
                    self.exporter.handlers.handle(event)

    def exposition(self) -> str:
        from prometheus_client.exposition import generate_latest

        with self.exporter.instruments.collect_lock:
            return generate_latest(self.registry).decode()


def resp_message(payload: bytes, channel: bytes = b"/0.celeryev/worker.heartbeat") -> bytes:
    return (b"*4\r\n$8\r\npmessage\r\n$3\r\n/0*\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
            % (len(channel), channel, len(payload), payload))


def envelope(body: bytes) -> bytes:
    return json.dumps({
        "body": base64.b64encode(body).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": {"hostname": "w@h"},
        "properties": {"delivery_mode": 1, "body_encoding": "base64",
                       "delivery_info": {"exchange": "celeryev", "routing_key": "x"}},
    }).encode()


#: libFuzzer dictionary: the RESP and envelope tokens random bytes would rarely hit.
RESP_TOKENS = ["*", "$", ":", "+", "-", "\r\n", "*4\r\n", "*3\r\n", "$-1\r\n", "$8\r\n",
               "pmessage", "message", '"body"', '"properties"', '"body_encoding"', '"base64"',
               '"content-type"', "application/json", '"type"', '"task-', '"worker-']


def dict_escape(token: str) -> str:
    """libFuzzer's dictionary escaping: printable ASCII as is, the rest as \\xHH."""
    return "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\x{b:02X}"
                   for b in token.encode())


PLAUSIBLE = ["w1@host", "tests.ok", "celery", "t-1", "t-2", "ValueError('x')",
             "2026-11-29T12:00:00", "2026-11-29T12:00:00+00:00"]


def fuzzed_value(fdp: Any, depth: int = 0) -> Any:
    """A JSON value of any type: strings with control characters and lone surrogates,
    huge and negative numbers, NaN and infinities, nested lists and objects."""
    makers = [
        lambda: fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40)),
        lambda: fdp.ConsumeInt(8),
        fdp.ConsumeRegularFloat,
        lambda: fdp.PickValueInList([None, True, False, 0, -1, 1e308, -0.0]),
        lambda: fdp.PickValueInList(PLAUSIBLE),
        lambda: fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 300)),
        fdp.ConsumeFloat,
    ]
    if depth < 2:
        makers += [
            lambda: [fuzzed_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))],
            lambda: {fdp.ConsumeUnicodeNoSurrogates(8): fuzzed_value(fdp, depth + 1)
                     for _ in range(fdp.ConsumeIntInRange(0, 3))},
        ]
    return makers[fdp.ConsumeIntInRange(0, len(makers) - 1)]()


def fuzzed_event(fdp: Any, now: float) -> dict[str, Any]:
    event: dict[str, Any] = {"type": fdp.PickValueInList(list(EVENT_TYPES))}
    # Mostly plausible values, so the handlers get past validation and into the logic.
    event["uuid"] = fdp.PickValueInList(["t-1", "t-2", "t-3", "t-4"])
    event["hostname"] = fdp.PickValueInList(["w1@host", "w2@host", "w3@host"])
    event["timestamp"] = now + fdp.ConsumeIntInRange(-100, 100)
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        event[fdp.PickValueInList(list(FIELDS))] = fuzzed_value(fdp)
    if fdp.ConsumeBool():
        event[fdp.ConsumeUnicode(6)] = fuzzed_value(fdp)
    return event


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` in reads of ``size`` bytes, as TCP reads would cut it."""
    return [data[pos:pos + size] for pos in range(0, len(data), size)] or [b""]


def seed(payload: bytes, mode: int, chunk: int = 4096) -> bytes:
    """An input selecting ``mode``: atheris takes integers from the end of the data
    (the clock step, then the mode, then the read size) and bytes from the front."""
    return payload + chunk.to_bytes(2, "little") + bytes([mode, 0])


def make_one_input(pipeline: Pipeline, findings: Findings, check_every: int,
                   last_exposition: list[str]) -> Any:
    import atheris
    from prometheus_client.parser import text_string_to_metric_families

    def one_input(data: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(data)
        pipeline.now += fdp.ConsumeIntInRange(0, 20) / 4
        mode = fdp.ConsumeIntInRange(0, 3)
        chunk = fdp.ConsumeIntInRange(1, 4096)
        if mode == 0:
            stream = fdp.ConsumeBytes(fdp.remaining_bytes())
        elif mode == 1:
            stream = resp_message(fdp.ConsumeBytes(fdp.remaining_bytes()))
        elif mode == 2:
            stream = resp_message(envelope(fdp.ConsumeBytes(fdp.remaining_bytes())))
        else:
            events = [fuzzed_event(fdp, pipeline.now) for _ in range(fdp.ConsumeIntInRange(1, 4))]
            body = json.dumps(events if len(events) > 1 else events[0]).encode()
            stream = resp_message(envelope(body))
        pipeline.feed(split(stream, chunk))
        pipeline.inputs += 1
        if pipeline.inputs % 100 == 0:
            pipeline.exporter.maintain()
        if findings.records:
            record = findings.records[0]
            raise RuntimeError(f"exporter logged an error: {record.getMessage()}\n"
                               f"{logging.Formatter().formatException(record.exc_info)}"
                               if record.exc_info else record.getMessage())
        if pipeline.inputs % check_every == 0:
            text = pipeline.exposition()
            for family in text_string_to_metric_families(text):
                # promtool accepts +Inf and NaN sample values; a series that holds one is
                # poisoned for good (core/values.py exists to prevent it): a finding.
                for sample in family.samples:
                    if not math.isfinite(sample.value):
                        raise RuntimeError(f"non-finite sample {sample.name}"
                                           f"{sample.labels} = {sample.value}")
            last_exposition[0] = text

    return one_input


def promtool_check(text: str) -> str | None:
    """None when promtool accepts the exposition, else its complaint."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return "promtool not found (apt-get install prometheus)"
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(),
                            capture_output=True, check=False, timeout=60)
    errors = [line for line in (result.stdout + result.stderr).decode().splitlines()
              if "error" in line.lower()]
    return "\n".join(errors) or None


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_corpus(directory: Path) -> None:
    """Real-shaped inputs for the structured mode and the raw modes to start from."""
    directory.mkdir(parents=True, exist_ok=True)
    now = time.time()
    events = [
        {"type": "task-sent", "uuid": "t-1", "name": "tests.ok", "queue": "celery",
         "hostname": "p@h", "timestamp": now},
        {"type": "task-received", "uuid": "t-1", "name": "tests.ok", "hostname": "w1@host",
         "timestamp": now, "routing_key": "celery"},
        {"type": "task-started", "uuid": "t-1", "hostname": "w1@host", "timestamp": now},
        {"type": "task-succeeded", "uuid": "t-1", "hostname": "w1@host", "timestamp": now,
         "runtime": 0.5},
        {"type": "task-failed", "uuid": "t-1", "hostname": "w1@host", "timestamp": now,
         "exception": "ValueError('boom')"},
        {"type": "worker-heartbeat", "hostname": "w1@host", "timestamp": now, "active": 1,
         "processed": 3, "freq": 2.0},
    ]
    for i, event in enumerate(events):
        body = json.dumps(event).encode()
        (directory / f"seed-raw-{i}").write_bytes(seed(resp_message(envelope(body)), 0, 7 + i))
        (directory / f"seed-payload-{i}").write_bytes(seed(envelope(body), 1))
        (directory / f"seed-body-{i}").write_bytes(seed(body, 2))
    # RESP's null bulk string among the items: the parser's rarely taken branch.
    null_bulk = b"*1\r\n$-1\r\n" + resp_message(envelope(json.dumps(events[0]).encode()))
    (directory / "seed-null-bulk").write_bytes(seed(null_bulk, 0))
    (directory / "seed-multi").write_bytes(seed(json.dumps(events).encode(), 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--corpus", type=Path, default=None,
                        help="corpus directory (kept); default: a temporary one")
    parser.add_argument("--check-every", type=int, default=500)
    parser.add_argument("--promtool-every", type=float, default=60.0)
    parser.add_argument("--max-growth-mb", type=float, default=64.0)
    parser.add_argument("--timeout", type=int, default=10)
    parser.add_argument("--record", action="store_true", help="append the run to bench/FUZZ.md")
    return parser.parse_args()


def main() -> int:
    args = parse_args()

    import atheris

    with atheris.instrument_imports(include=["otel_celery_metrics"]):
        from otel_celery_metrics.exporter import (  # noqa: F401 - instrumented for coverage
            _wire,
            handlers,
            liveness,
            service,
            store,
            tracker,
        )

    findings = Findings()
    logging.getLogger("otel_celery_metrics").addHandler(findings)
    pipeline = Pipeline()
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix="fuzz-events-"))
    seed_corpus(corpus)
    last_exposition = [""]
    one_input = make_one_input(pipeline, findings, args.check_every, last_exposition)

    started = time.monotonic()
    state: dict[str, float] = {"promtool_at": started, "rss_quarter": 0.0, "promtool_runs": 0}

    def report() -> int:
        elapsed = time.monotonic() - started
        text = pipeline.exposition()
        problem = promtool_check(text)
        state["promtool_runs"] += 1
        growth = rss_mb() - state["rss_quarter"] if state["rss_quarter"] else 0.0
        corpus_size = len(list(corpus.iterdir()))
        ok = not problem and growth <= args.max_growth_mb
        line = (
            f"{pipeline.inputs} executions in {elapsed:.0f} s ({pipeline.inputs / elapsed:.0f}/s),"
            f" corpus {corpus_size} inputs, final exposition {len(text)} bytes "
            f"({text.count(chr(10))} lines), promtool check metrics {state['promtool_runs']:.0f}"
            f" runs ({'all accepted' if not problem else 'REJECTED: ' + problem}), RSS "
            f"{rss_mb():.0f} MB ({growth:+.1f} MB since a quarter of the run): "
            f"{'no finding' if ok else 'FINDING'}"
        )
        print(line, flush=True)
        if args.record:
            with (REPO / "bench" / "FUZZ.md").open("a") as out:
                out.write(f"- {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                          f"`python bench/fuzz_events.py --seconds {args.seconds}`, Python "
                          f"{sys.version.split()[0]}: {line}\n")
        return 0 if ok else 1

    def checked(data: bytes) -> None:
        one_input(data)
        now = time.monotonic()
        if not state["rss_quarter"] and now - started >= args.seconds / 4:
            state["rss_quarter"] = rss_mb()
        if now - state["promtool_at"] >= args.promtool_every:
            state["promtool_at"] = now
            problem = promtool_check(pipeline.exposition())
            state["promtool_runs"] += 1
            if problem:
                raise RuntimeError(f"promtool check metrics rejects the exposition:\n{problem}")
        if now - started >= args.seconds:
            # libFuzzer's own -max_total_time exits without running Python's atexit.
            os._exit(report())

    tokens = corpus.parent / f"{corpus.name}.dict"
    tokens.write_text("".join(f'"{dict_escape(t)}"\n' for t in RESP_TOKENS))
    atheris.Setup([sys.argv[0], str(corpus), f"-timeout={args.timeout}", "-rss_limit_mb=4096",
                   f"-dict={tokens}"], checked)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
