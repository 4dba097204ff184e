"""Hostile publish headers and wrong clocks against a real prefork worker, scraped over HTTP.

A producer of another language (or with a broken clock) sends the publish-time header as
anything at all; a worker's clock is an hour off (libfaketime, Debian package faketime,
installed by scripts/setup). Every task is counted, every sample stays finite, and what
was refused is counted with its reason (docs/configuration.md, Clocks and bad input).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER
from tests.exporter.support import promtool_check
from tests.support import Samples, parse, producer, running_worker, scrape, value, wait_for

pytestmark = pytest.mark.integration

# The values: (header, the reason it is refused).
HOSTILE: list[tuple[object, str]] = [
    (-1e300, "implausible_time"),
    (float("-inf"), "invalid_time"),
    (float("nan"), "invalid_time"),
    (True, "invalid_time"),
    ("1700000000", "invalid_time"),
    ([1, 2], "invalid_time"),
    (time.time() + 10 * 365 * 86_400, "implausible_time"),  # ten years ahead
]
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def all_counted(worker_samples: Samples, queue: str, n: int) -> bool:
    return value(worker_samples, "celery_tasks_total", queue=queue) >= n


def test_hostile_publish_headers_are_refused_counted_and_every_task_still_counts(
    redis_url: str, queue: str
) -> None:
    with running_worker(redis_url, queue, pool="prefork", concurrency=2) as worker:
        app = producer(redis_url)
        for header, _ in HOSTILE:
            app.send_task("tests.ok", queue=queue, headers={PUBLISHED_AT_HEADER: header})
        app.send_task("tests.ok", queue=queue)  # and one without the header
        n = len(HOSTILE) + 1
        wait_for(lambda: all_counted(worker.samples(), queue, n), 60, what="every task counted")
        text = scrape(worker.port)
        samples = parse(text)
        log = worker.log_text()
    assert all(math.isfinite(v) for v in samples.values())
    assert value(samples, "celery_tasks_total", queue=queue, state="SUCCESS") == n
    for reason in ("invalid_time", "implausible_time"):
        expected = sum(1 for _, r in HOSTILE if r == reason)
        assert value(samples, "otel_celery_metrics_dropped_total", reason=reason) == expected
    assert value(samples, "otel_celery_metrics_dropped_total", reason="internal_error") == 0
    # An invalid header is treated as absent: that wait counts from the worker's receipt.
    # An implausible one costs the wait.
    waits = value(samples, "celery_task_queue_wait_seconds_count", queue=queue)
    assert waits == n - sum(1 for _, r in HOSTILE if r == "implausible_time")
    assert value(samples, "celery_task_queue_wait_seconds_count", wait_from="publish") == 0
    assert value(samples, "celery_task_queue_wait_seconds_sum", queue=queue) < 60
    # Logged once per reason and task name, naming the counter, never echoing the value.
    lines = [line for line in log.splitlines() if "was not recorded" in line]
    assert len(lines) == 2, lines
    assert all("tests.ok" in line and "otel_celery_metrics_dropped_total" in line
               for line in lines)
    assert "1700000000" not in log
    promtool_check(text)


@pytest.mark.parametrize(
    ("offset", "recorded"),
    [("-3600", False), ("+3600", True)],
    ids=["worker-1h-behind", "worker-1h-ahead"],
)
def test_a_worker_whose_clock_is_an_hour_off(
    redis_url: str, queue: str, offset: str, recorded: bool
) -> None:
    """The producer's clock is right. A worker an hour behind starts every task "before"
    it was published: beyond the tolerance, the wait is refused and counted. An hour ahead
    is indistinguishable from an hour's wait: recorded, as documented. Runtimes are
    Celery's monotonic ones either way."""
    if not LIBFAKETIME.exists():
        pytest.fail(f"{LIBFAKETIME} is missing: scripts/setup installs Debian's faketime")
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset,
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_NO_CACHE": "1"}
    with running_worker(redis_url, queue, pool="prefork", concurrency=2, env=env) as worker:
        app = producer(redis_url)
        for _ in range(3):
            # tests.ok, not tests.sleep: under libfaketime, time.sleep() fails (EINVAL).
            app.send_task("tests.ok", queue=queue, headers={PUBLISHED_AT_HEADER: time.time()})
        wait_for(lambda: all_counted(worker.samples(), queue, 3), 60, what="every task counted")
        samples = worker.samples()
        log = worker.log_text()
    assert all(math.isfinite(v) for v in samples.values())
    states = {dict(k)["state"]: v for (n, k), v in samples.items()
              if n == "celery_tasks_total" and v}
    assert states == {"SUCCESS": 3}, (states, log[-3000:])
    waits = value(samples, "celery_task_queue_wait_seconds_count", wait_from="publish")
    refused = value(samples, "otel_celery_metrics_dropped_total", reason="implausible_time")
    if recorded:
        assert (waits, refused) == (3, 0)
        mean = value(samples, "celery_task_queue_wait_seconds_sum", wait_from="publish") / 3
        assert 3590 < mean < 3660
    else:
        assert (waits, refused) == (0, 3)
    # Celery's runtimes come from a monotonic clock: the hour does not show.
    assert value(samples, "celery_task_runtime_seconds_count", queue=queue) == 3
    assert 0 <= value(samples, "celery_task_runtime_seconds_sum", queue=queue) < 1.0
