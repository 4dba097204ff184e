"""``otel-celery-metrics-demo``: run an instrumented worker, send a mix of tasks, show /metrics.

It starts ``opentelemetry-instrument celery -A otel_celery_metrics.demo.app worker``
(prefork, two children) exactly as a user would, with the standard ``OTEL_*`` variables,
on kombu's filesystem transport in a temporary folder; then publishes succeeding,
failing and retried tasks from an instrumented producer and prints the ``celery_``
series once every task has reached a terminal state.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import IO

from otel_celery_metrics.version import __version__

EXPECTED = {"SUCCESS": 0, "FAILURE": 0, "RETRY": 0}


def _scrape(port: int) -> str:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _total(text: str, state: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith("celery_tasks_total{") and f'state="{state}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _publish(folder: str, tasks: int) -> dict[str, int]:
    os.environ["OTEL_CELERY_DEMO_DIR"] = folder
    from otel_celery_metrics.demo.app import make_app
    from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor

    # The producer is instrumented too, so queue wait is measured from publish time.
    CeleryMetricsInstrumentor().instrument()
    app = make_app(folder)
    expected = dict(EXPECTED)
    for i in range(tasks):
        kind = i % 3
        if kind == 0:
            app.send_task("demo.resize_image", args=(1024 + i,))
            expected["SUCCESS"] += 1
        elif kind == 1:
            app.send_task("demo.charge_card", args=(i,))
            expected["FAILURE" if i % 4 == 0 else "SUCCESS"] += 1
        else:
            app.send_task("demo.sync_inventory", args=(1,))
            expected["RETRY"] += 1
            expected["SUCCESS"] += 1
    return expected


def _start_worker(port: int, folder: str, log: IO[str]) -> subprocess.Popen[bytes]:
    bindir = Path(sys.executable).parent
    env = dict(os.environ)
    env.update({
        "OTEL_CELERY_DEMO_DIR": folder,
        "OTEL_SERVICE_NAME": "demo-workers",
        "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
    })
    cmd = [
        str(bindir / "opentelemetry-instrument"), str(bindir / "celery"),
        "-A", "otel_celery_metrics.demo.app", "worker", "-P", "prefork", "-c", "2",
        "--loglevel=WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat",
    ]
    print(f"$ opentelemetry-instrument celery {' '.join(cmd[2:])}", flush=True)
    print(f"  (worker output: {log.name})", flush=True)
    return subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def _wait_for_endpoint(worker: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _scrape(port)
            return True
        except OSError:
            if worker.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _wait_for_tasks(
    worker: subprocess.Popen[bytes], port: int, expected: dict[str, int], timeout: float
) -> str | None:
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        # One refused or reset scrape is not the end: poll again until the deadline.
        with contextlib.suppress(OSError):
            text = _scrape(port)
        if text and all(_total(text, s) >= n for s, n in expected.items()):
            return text
        if time.monotonic() > deadline or worker.poll() is not None:
            return None
        time.sleep(0.2)


def _show(text: str, port: int) -> None:
    print(f"\n$ curl -s localhost:{port}/metrics | grep -E '^celery_(tasks|task_)'")
    for line in text.splitlines():
        if line.startswith(("celery_tasks_total", "celery_task_failures_total",
                            "celery_task_runtime_seconds_count",
                            "celery_task_queue_wait_seconds_count")):
            print(line)


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="otel-celery-metrics-demo", description=__doc__)
    parser.add_argument("--port", type=int, default=9809, help="metrics port (default 9809)")
    parser.add_argument("--tasks", type=int, default=30, help="tasks to publish (default 30)")
    parser.add_argument("--keep-running", action="store_true",
                        help="keep the worker and /metrics up until Ctrl-C")
    parser.add_argument("--version", action="version",
                        version=f"otel-celery-metrics-demo {__version__}")
    args = parser.parse_args(argv)

    folder = tempfile.mkdtemp(prefix="otel-celery-demo-")
    log_path = Path(folder) / "worker.log"
    with log_path.open("w") as log:
        worker = _start_worker(args.port, folder, log)
        try:
            if not _wait_for_endpoint(worker, args.port, 60):
                print(log_path.read_text()[-3000:], file=sys.stderr)
                print("the worker did not start (its output is above)", file=sys.stderr)
                return 1
            expected = _publish(folder, args.tasks)
            print(f"published {args.tasks} tasks; expecting {expected}", flush=True)
            text = _wait_for_tasks(worker, args.port, expected, 120)
            if text is None:
                print("timed out waiting for every task to finish", file=sys.stderr)
                return 1
            _show(text, args.port)
            got = {s: _total(text, s) for s in expected}
            print(f"\nexpected {expected}, /metrics shows {got}")
            if args.keep_running:
                print(f"serving http://127.0.0.1:{args.port}/metrics; Ctrl-C to stop", flush=True)
                worker.wait()
            return 0 if got == {s: float(n) for s, n in expected.items()} else 1
        except KeyboardInterrupt:
            return 0
        finally:
            _stop(worker)


if __name__ == "__main__":
    sys.exit(main())
