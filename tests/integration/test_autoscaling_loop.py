"""The scaling loop: a burst of tasks on real Redis, real prefork workers started and
stopped (warm shutdown) by a small autoscaler applying KEDA's formula to the shipped
ScaledObject's queries on a real Prometheus 3 evaluating the shipped rules; then the same
burst under the same autoscaler reading LLEN (KEDA's redis listLength trigger), for
comparison. Both timelines are printed (pytest -s); docs/autoscaling.md quotes them.

The burst is the issue's: 300 tasks of 0.2-2 s, on workers that hoard (acks_late, prefetch
multiplier 8: each worker holds up to 16 tasks); replicas 1..5 of 2 processes, a tick every
2 s, a 6 s scale-down window (shortened from the HPA's 5 minutes to fit CI).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.integration.autoscaling import (
    Fleet,
    keda_replicas,
    keda_triggers,
    llen_replicas,
    running_fleet,
    scalar,
)
from tests.integration.scaling_loop import Policy, ScalingLoop
from tests.support import REDIS_URL, Worker, producer, unique_queue

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

CONCURRENCY, LO, HI = 2, 1, 5
#: Hoarding workers: each takes 8 messages per process off the list and acknowledges late.
HOARDING = {"AUTOSCALE_PREFETCH": "8", "AUTOSCALE_ACKS_LATE": "1"}


@dataclass
class Outcome:
    name: str
    loop: ScalingLoop
    drained_after: float
    back_to_min_after: float
    peak: int

    def summary(self) -> str:
        return (f"{self.name}: drained in {self.drained_after:.1f}s, back to {LO} replica(s) "
                f"after {self.back_to_min_after:.1f}s, peak {self.peak} replicas, "
                f"{self.loop.started_total} workers started, {self.loop.busy_stops} stopped "
                f"while executing, {self.loop.replica_seconds():.0f} replica-seconds")


def shipped_policy(fleet: Fleet, queue: str) -> Policy:
    triggers = keda_triggers(queue, CONCURRENCY)

    def wanted(current: int) -> int:
        values = [scalar(fleet.prometheus, t.query) for t in triggers]
        return keda_replicas(values, triggers, LO, HI, current)
    return wanted


def llen_policy(queue: str) -> Policy:
    client = redis.Redis.from_url(REDIS_URL)
    return lambda current: llen_replicas(int(client.llen(queue)), CONCURRENCY, LO, HI)


def burst(fleet: Fleet, name: str, queue: str, make_policy: Callable[[], Policy],
          durations: list[float]) -> Outcome:
    runs = redis.Redis.from_url(REDIS_URL)

    def start(port: int) -> Worker:
        return Worker(REDIS_URL, queue, app="tests.apps.autoscale_app", concurrency=CONCURRENCY,
                      events=True, metrics_port=port,
                      env={"AUTOSCALE_RUNS_URL": REDIS_URL, "AUTOSCALE_RUNS_KEY": queue,
                           **HOARDING})

    loop = ScalingLoop(start, fleet.ports, make_policy(), LO, HI)
    try:
        loop.tick()  # the minimum, before the burst
        app = producer(REDIS_URL)
        app.conf.task_send_sent_event = True
        sent = [app.send_task("autoscale.work", args=(d,), queue=queue, routing_key=queue).id
                for d in durations]
        t0 = time.monotonic()
        drained: list[float] = []

        def finished() -> bool:
            if not drained and runs.llen(f"{queue}:done") >= len(sent):
                drained.append(time.monotonic() - t0)
            return bool(drained) and len(loop.running) == LO and not loop.stopping
        loop.run_until(finished, timeout=180)
        back = time.monotonic() - t0
    finally:
        loop.shutdown()
    print(f"\n[autoscaling loop: {name}] replica timeline\n{loop.render()}")
    started = [i.decode() for i in runs.lrange(f"{queue}:started", 0, -1)]
    done = [i.decode() for i in runs.lrange(f"{queue}:done", 0, -1)]
    # Every task ran exactly once and ran to its end: none lost, none twice, none cut short.
    assert sorted(started) == sorted(sent), "a task was lost or ran twice"
    assert sorted(done) == sorted(sent), "a task did not finish"
    return Outcome(name, loop, drained[0], back, max(s.running for s in loop.timeline))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    queues = [unique_queue("loop-shipped"), unique_queue("loop-llen")]
    with running_fleet(tmp_path_factory.mktemp("loop"), REDIS_URL, queues,
                       worker_ports=HI + 2) as running:
        running.queues = queues  # type: ignore[attr-defined]
        yield running


def test_a_burst_scales_up_drains_and_returns_to_min_on_the_shipped_signal(fleet: Fleet) -> None:
    shipped_queue, llen_queue = fleet.queues  # type: ignore[attr-defined]
    rng = random.Random(22)  # noqa: S311 - task durations, not secrets
    durations = [round(rng.uniform(0.2, 2.0), 2) for _ in range(300)]
    shipped = burst(fleet, "shipped signal", shipped_queue,
                    lambda: shipped_policy(fleet, shipped_queue), durations)
    naive = burst(fleet, "LLEN", llen_queue, lambda: llen_policy(llen_queue),
                  durations)
    print(f"\n[autoscaling loop] {shipped.summary()}\n[autoscaling loop] {naive.summary()}")
    assert shipped.peak == HI  # 300 tasks outstanding: ceil(300 / 2) > 5, capped at max
    assert shipped.loop.busy_stops == 0  # never told a worker to go while it ran tasks
    # The signal keeps the fleet until the work is done: scale-in starts after the drain.
    first_in = next(s.at for s in shipped.loop.timeline if "-" in s.note)
    start_at = shipped.loop.timeline[0].at
    assert first_in - start_at >= shipped.drained_after - 2 * shipped.loop.period
