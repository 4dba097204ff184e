"""A small autoscaler for the tests: every ``period`` it asks a policy for the replicas it
wants and starts or stops real ``celery worker`` processes between ``lo`` and ``hi``, as the
HPA does for a Deployment (scale-down stabilisation: the highest wish of the last
``window`` seconds; scale-up at once). Scale-in sends SIGTERM (Celery's warm shutdown) to
the worker holding the fewest tasks, as read from its own /metrics just before (the
pod-deletion-cost a careful operator would set), and records whether it was executing
any: a "busy stop" is a worker told to go while running tasks.

Used by tests/integration/test_autoscaling_loop.py and bench/autoscaling_loop.py.
"""

from __future__ import annotations

import itertools
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.support import Worker, value

#: Replicas a policy wants now, given the replicas running now.
Policy = Callable[[int], int]


@dataclass
class Step:
    at: float
    running: int
    wanted: int
    stopping: int
    note: str = ""


@dataclass
class ScalingLoop:
    start_worker: Callable[[int], Worker]  # metrics port -> a started (not yet ready) worker
    ports: list[int]
    policy: Policy
    lo: int
    hi: int
    period: float = 2.0
    window: float = 6.0
    running: list[Worker] = field(default_factory=list)
    stopping: list[Worker] = field(default_factory=list)
    timeline: list[Step] = field(default_factory=list)
    busy_stops: int = 0
    started_total: int = 0
    _wishes: list[tuple[float, int]] = field(default_factory=list)
    _t0: float = field(default_factory=time.monotonic)

    def _free_port(self) -> int:
        used = {w.port for w in (*self.running, *self.stopping)}
        return next(p for p in self.ports if p not in used)

    def _reap(self) -> None:
        for w in list(self.stopping):
            if w.proc.poll() is not None:
                w.stop()  # closes its log; the process is gone
                self.stopping.remove(w)

    def _held(self, w: Worker) -> tuple[float, float]:
        try:
            samples = w.samples()
        except OSError:
            return 0.0, 0.0  # not serving yet: holds nothing
        return (value(samples, "celery_tasks_executing"),
                value(samples, "celery_tasks_reserved"))

    def tick(self) -> None:
        self._reap()
        now = time.monotonic()
        current = len(self.running)
        wish = max(self.lo, min(self.hi, self.policy(current)))
        self._wishes = [(t, n) for t, n in self._wishes if now - t < self.window]
        self._wishes.append((now, wish))
        # Up at once; down only to the highest wish of the window (no flapping).
        target = wish if wish >= current else max(n for _, n in self._wishes)
        note = ""
        while len(self.running) < target and len(self.running) + len(self.stopping) < len(
                self.ports):
            self.running.append(self.start_worker(self._free_port()))
            self.started_total += 1
            note += "+"
        while len(self.running) > target:
            held = {id(w): self._held(w) for w in self.running}
            victim = min(self.running, key=lambda w: sum(held[id(w)]))
            if held[id(victim)][0] > 0:
                self.busy_stops += 1
                note += "!"
            self.running.remove(victim)
            victim.proc.send_signal(signal.SIGTERM)  # warm shutdown
            self.stopping.append(victim)
            note += "-"
        self.timeline.append(Step(round(now - self._t0, 1), len(self.running), wish,
                                  len(self.stopping), note))

    def run_until(self, done: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = time.monotonic()
            self.tick()
            if done():
                return
            time.sleep(max(0.0, self.period - (time.monotonic() - started)))
        raise AssertionError(f"the loop did not finish in {timeout}s:\n{self.render()}")

    def shutdown(self) -> None:
        for w in (*self.running, *self.stopping):
            w.stop(timeout=20)
        self.running.clear()
        self.stopping.clear()

    def replica_seconds(self) -> float:
        steps = self.timeline
        return sum(a.running * (b.at - a.at) for a, b in itertools.pairwise(steps))

    def render(self) -> str:
        """The replica timeline: one line per tick (+ started, - stopped, ! stopped busy)."""
        return "\n".join(f"  t={s.at:6.1f}s wanted={s.wanted:2d} running={s.running:2d} "
                         f"stopping={s.stopping} {'#' * s.running} {s.note}"
                         for s in self.timeline)


def ceil_div(a: float, b: float) -> int:
    return math.ceil(a / b) if a > 0 else 0
