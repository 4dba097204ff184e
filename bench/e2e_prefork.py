"""End-to-end throughput of ``celery worker -P prefork -c 2`` on Redis: bare, recipe, ours.

Per (round, mode): flush Redis db 14 (only that db), pre-fill the queue with N no-op tasks
(``_bench_app.py``), start a worker, and poll the Redis counter the tasks INCR until it
reaches N (with a deadline). Throughput is measured from the first finished task to the
last, so worker start-up (which differs: ``opentelemetry-instrument`` imports more) is
reported apart. Modes:

- bare: ``celery -A _bench_app worker`` (no opentelemetry-instrument);
- recipe: the same with ``BENCH_RECIPE=1`` (prometheus_client in signals, a port per child);
- ours: ``opentelemetry-instrument celery ...`` with ``OTEL_METRICS_EXPORTER=prometheus``
  on a free port, tracing off (``OTEL_TRACES_EXPORTER=none`` and the tracing
  instrumentation disabled, so only our instrumentor is active). After the run its
  ``/metrics`` is scraped and ``celery_tasks_total`` must equal N;
- otel_off: as ours, with ours disabled too (``celery,celery_metrics``): the cost of
  ``opentelemetry-instrument`` and the SDK alone, to tell apart from ours.

Opt-in modes (``--modes traced,traced_norelay``), tracing on: as ours, with
opentelemetry-instrumentation-celery tracing every task and exporting spans over OTLP/HTTP
to an in-process receiver (``tests/otlp_receiver.py``): ``traced`` with the pool-child
relay (spans and ``flower.task.runtime.seconds`` leave through the main process),
``traced_norelay`` with ``OTEL_CELERY_METRICS_RELAY=false`` (each child exports its own
spans), and ``traced_baseline``: as ``traced`` with the package imported from
``BENCH_BASELINE_PYTHONPATH`` (a checkout of an earlier commit, e.g. ``git archive <commit>
otel_celery_metrics | tar -x -C /tmp/base``), so a change is measured against its
baseline in the same run. The spans that arrived per run are printed; each traced run
must deliver all N.

CPU per task of the main process and of the pool children (from ``/proc``, first to
last task) says which side pays.

    /work/venv/bin/python bench/e2e_prefork.py [--tasks 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
MODES = ("bare", "recipe", "ours", "otel_off")
TRACED = ("traced", "traced_norelay", "traced_baseline")
#: OTLP/HTTP endpoint of the span receiver for the traced modes (set by main()).
_span_endpoint = ""
_TICK = os.sysconf("SC_CLK_TCK")
#: Flushed before every run: a database of its own (``BENCH_BROKER_URL`` to choose another).
BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker_command(mode: str, concurrency: int) -> tuple[list[str], dict[str, str], int | None]:
    keep = ("BENCH_EXTRA_IMPORT",)
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "BENCH_")) or k in keep
    }
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env["BENCH_BROKER_URL"] = BROKER_URL
    celery = [
        str(VENV_BIN / "celery"), "-A", "_bench_app", "worker", "-P", "prefork",
        "-c", str(concurrency), "-Q", "bench", "-l", "WARNING",
        "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    port = None
    if mode == "recipe":
        env["BENCH_RECIPE"] = "1"
    elif mode in ("ours", "otel_off", *TRACED):
        port = _free_port()
        env.update({
            "OTEL_METRICS_EXPORTER": "prometheus",
            "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
            "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "none",
            # opentelemetry-instrumentation-celery (tracing) is installed too: off, so
            # the figure is ours alone.
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "celery",
        })
        if mode in TRACED:
            env.update({
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{_span_endpoint}/v1/traces",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
                "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis",
                "OTEL_CELERY_METRICS_RELAY": "false" if mode == "traced_norelay" else "true",
            })
        if mode == "traced_baseline":
            baseline = os.environ.get("BENCH_BASELINE_PYTHONPATH")
            if not baseline:
                msg = "traced_baseline needs BENCH_BASELINE_PYTHONPATH (a baseline checkout)"
                raise SystemExit(msg)
            env["PYTHONPATH"] = os.pathsep.join([baseline, env["PYTHONPATH"]])
        if mode == "otel_off":
            # The SDK and opentelemetry-instrument alone, ours disabled: what is left of
            # ours' cost once this is subtracted is ours.
            env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "celery,celery_metrics"
            port = None
        celery = [str(VENV_BIN / "opentelemetry-instrument"), *celery]
    return celery, env, port


def _prefill(client: Any, tasks: int) -> None:
    sys.path.insert(0, str(HERE))
    os.environ["BENCH_BROKER_URL"] = BROKER_URL
    from _bench_app import app, noop

    client.flushdb()  # db 14 only: the bench's own broker db
    with app.producer_or_acquire() as producer:
        for _ in range(tasks):
            noop.apply_async(producer=producer)


def _scrape_total(port: int) -> float:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    pattern = re.compile(r"^celery_tasks_total\{[^}]*\} ([0-9.e+]+)$", re.MULTILINE)
    return sum(float(v) for v in pattern.findall(text))


def _settled_total(port: int, tasks: int, wait: float = 10.0) -> float:
    """``celery_tasks_total`` once it reaches ``tasks`` (or after ``wait`` seconds).

    A task INCRs the bench counter before its result reaches the main process, which is
    where it is counted: the last few are counted a moment after the counter is full.
    """
    deadline = time.monotonic() + wait
    while True:
        counted = _scrape_total(port)
        if counted >= tasks or time.monotonic() > deadline:
            return counted
        time.sleep(0.05)


def _cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds so far of the worker's main process and of its live pool children."""

    def own(p: int | str) -> float:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime

    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own(pid), sum(own(c) for c in children)


def _stop(proc: subprocess.Popen[bytes]) -> tuple[float, int]:
    """Warm shutdown; returns (CPU seconds of the whole worker tree, exit status)."""
    proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = status
            return usage.ru_utime + usage.ru_stime, status
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the group of the worker we started
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = status
    return usage.ru_utime + usage.ru_stime, status


def run_one(mode: str, tasks: int, concurrency: int, timeout: float) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    _prefill(client, tasks)
    cmd, env, port = _worker_command(mode, concurrency)
    log_path = Path(tempfile.gettempdir()) / f"otel-celery-bench-e2e-{mode}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    first_at = first_count = done_at = None
    cpu_first = cpu_done = (0.0, 0.0)
    try:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            done = int(client.get("bench:done") or 0)
            now = time.perf_counter()
            if first_at is None and done:
                first_at, first_count = now, done
                cpu_first = _cpu_split(proc.pid)
            if done >= tasks:
                done_at = now
                cpu_done = _cpu_split(proc.pid)
                break
            if proc.poll() is not None:
                break
            time.sleep(0.005)
        counted = _settled_total(port, tasks) if port and done_at else None
    finally:
        cpu, status = _stop(proc)
        log.close()
    if done_at is None or first_at is None or first_count is None:
        done_count = client.get("bench:done")
        msg = f"{mode}: {done_count} of {tasks} tasks done in {timeout}s; see {log_path}"
        raise SystemExit(msg)
    if counted is not None and counted != tasks:
        msg = f"{mode}: /metrics counted {counted} tasks, expected {tasks}"
        if not os.environ.get("BENCH_EXTRA_IMPORT"):
            raise SystemExit(msg)
        # A patch that batches across tasks holds an idle child's last measurements
        # until the child's next task or exit: expected, reported, not fatal.
        print(f"  note: {msg} (batched, not yet sent)", flush=True)
    return {
        "tasks_per_s": (tasks - first_count) / (done_at - first_at),
        "startup_s": first_at - started,
        "total_s": done_at - started,
        "worker_cpu_s": cpu,
        # Steady state (first to last task): CPU per task of the main process and of
        # the pool children (clock ticks of 10 ms: rough, hence over N tasks).
        "main_cpu_us": (cpu_done[0] - cpu_first[0]) / (tasks - first_count) * 1e6,
        "pool_cpu_us": (cpu_done[1] - cpu_first[1]) / (tasks - first_count) * 1e6,
        "exit_status": status,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=180.0, help="per run, seconds")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    receiver = None
    if any(m in TRACED for m in modes):
        global _span_endpoint  # noqa: PLW0603
        sys.path.insert(0, str(HERE.parent))
        from tests.otlp_receiver import OtlpHttpReceiver

        receiver = OtlpHttpReceiver().start()
        _span_endpoint = receiver.endpoint
    print(f"N={args.tasks} rounds={args.rounds} -P prefork -c {args.concurrency} "
          f"broker={BROKER_URL} cpus={os.cpu_count()}", flush=True)
    runs: list[dict[str, dict[str, float]]] = []
    for r in range(args.rounds):
        order = modes[r % len(modes):] + modes[: r % len(modes)]
        this_round = {}
        for mode in order:
            spans_before = len(receiver.received.spans()) if receiver else 0
            f = this_round[mode] = run_one(mode, args.tasks, args.concurrency, args.timeout)
            if receiver is not None and mode in TRACED:
                f["spans"] = len(receiver.received.spans()) - spans_before
                print(f"  {mode}: {f['spans']:.0f} spans arrived by the worker's exit",
                      flush=True)
            print(f"round {r + 1} {mode:8s} {f['tasks_per_s']:7.0f} tasks/s  "
                  f"start-up {f['startup_s']:5.2f} s  total {f['total_s']:5.2f} s  "
                  f"worker cpu {f['worker_cpu_s']:5.2f} s  per task: main "
                  f"{f['main_cpu_us']:4.0f} us, pool {f['pool_cpu_us']:4.0f} us", flush=True)
        runs.append(this_round)
    print("\nmedians over rounds (rounds on this shared 2-core machine swing about +-25%)")
    # Ratios against bare, or (traced modes only) against tracing without the relay.
    reference = "bare" if "bare" in modes else (
        "traced_norelay" if "traced_norelay" in modes else None)
    base = (statistics.median(r[reference]["tasks_per_s"] for r in runs)
            if reference else None)
    for mode in modes:
        rate = statistics.median(r[mode]["tasks_per_s"] for r in runs)
        paired = ([r[mode]["tasks_per_s"] / r[reference]["tasks_per_s"] for r in runs]
                  if reference else [])
        cpu = statistics.median(r[mode]["worker_cpu_s"] for r in runs)
        start = statistics.median(r[mode]["startup_s"] for r in runs)
        main_us = statistics.median(r[mode]["main_cpu_us"] for r in runs)
        pool_us = statistics.median(r[mode]["pool_cpu_us"] for r in runs)
        ratio = (f"  vs {reference} {rate / base:5.2f} (median per-round "
                 f"{statistics.median(paired):5.2f})" if base else "")
        spans = (" spans " + ", ".join(f"{r[mode]['spans']:.0f}" for r in runs)
                 if mode in TRACED and receiver is not None else "")
        print(f"{mode:8s} {rate:6.0f} tasks/s  start-up {start:4.2f} s  worker cpu {cpu:5.2f} s  "
              f"cpu/task main {main_us:4.0f} us pool {pool_us:4.0f} us{ratio}{spans}")
    if receiver is not None:
        receiver.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
