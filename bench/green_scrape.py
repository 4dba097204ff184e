"""Scrape latency of ``/metrics`` while every pool slot is busy: gevent vs threads.

Per mode, a real ``opentelemetry-instrument celery worker -c 10`` on Redis
(``tests.support.Worker``, the integration tests' app), ten ``tests.sleep`` tasks holding
every pool slot, then ``--scrapes`` sequential scrapes of ``/metrics``. Prints the median,
95th percentile and maximum per mode, and the ratio of medians to the threads pool measured
in the same run (the baseline: a pool whose scrapes never depended on us). Modes:

- threads: ``-P threads`` (baseline);
- gevent-setting: ``-P gevent`` with
  ``OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH=patch_all``;
- gevent-no-setting: ``-P gevent`` alone (our pre-SDK hook patches).

Before issue 15 both gevent modes never answered. Run from the repository root:

    .venv/bin/python bench/green_scrape.py [--scrapes 60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import REDIS_URL, Worker, parse, producer, unique_queue, value, wait_for

MODES = {
    "threads": ("threads", {}),
    "gevent-setting": (
        "gevent", {"OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH": "patch_all"}
    ),
    "gevent-no-setting": ("gevent", {}),
}
CONCURRENCY = 10


def _scrape_seconds(port: int) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return time.perf_counter() - started, text


def measure(mode: str, scrapes: int) -> list[float]:
    pool, env = MODES[mode]
    queue = unique_queue("bench")
    worker = Worker(REDIS_URL, queue, pool=pool, concurrency=CONCURRENCY, env=env)
    try:
        worker.wait_ready(60)
        app = producer(REDIS_URL)
        for _ in range(CONCURRENCY):
            app.send_task("tests.sleep", args=(10.0,), queue=queue, routing_key=queue)
        wait_for(lambda: value(parse(_scrape_seconds(worker.port)[1]),
                               "celery_tasks_executing") == CONCURRENCY,
                 timeout=30, what="every slot busy")
        return [_scrape_seconds(worker.port)[0] for _ in range(scrapes)]
    finally:
        worker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(args.rounds):  # alternate modes so machine load hits each alike
        for mode in MODES:
            results[mode] += measure(mode, args.scrapes)
    base = statistics.median(results["threads"])
    print(f"{'mode':<18} {'median ms':>10} {'p95 ms':>8} {'max ms':>8} {'ratio':>6}")
    for mode, seconds in results.items():
        ordered = sorted(seconds)
        median = statistics.median(ordered)
        p95 = ordered[int(0.95 * (len(ordered) - 1))]
        print(f"{mode:<18} {median * 1e3:>10.1f} {p95 * 1e3:>8.1f} "
              f"{ordered[-1] * 1e3:>8.1f} {median / base:>6.2f}")


if __name__ == "__main__":
    main()
