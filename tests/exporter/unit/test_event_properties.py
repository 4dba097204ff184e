"""Property-based: any sequence of task lifecycles and heartbeats, hostile numbers
included, gives a finite, valid exposition whose totals equal a small reference model.

Events go through :meth:`EventHandlers.handle`, the entry point the receivers call, into a
real exporter (never started: no thread, no port). The model restates the documented
rules (docs/exporter.md, Clocks and bad input) from the values each event carries.
Examples per run come from the Hypothesis profile (tests/conftest.py).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.handlers import SENT_EVENT_GRACE
from otel_celery_metrics.exporter.service import Exporter
from tests.exporter.support import FakeClock, promtool_check
from tests.hostile import is_time

NAMES = ("e.a", "e.b", "e.c", "e.d", "e.e")
MAX_TASK_NAMES = 3
MAX_WAIT, MAX_RUNTIME, SKEW = 3600.0, 3600.0, 60.0
T0 = 1_700_000_000.0
W = "celery@w1"
TERMINAL = {"task-succeeded": "SUCCESS", "task-failed": "FAILURE", "task-retried": "RETRY",
            "task-rejected": "REJECTED", "task-revoked": "REVOKED"}

HOSTILE = st.sampled_from([
    -1e300, 1e300, float("-inf"), float("inf"), float("nan"), True, False, "1700000000", "",
    [1, 2], {"a": 1}, 10**400, 0, -1,
])
# A time near T0 (most events are plausible), or anything at all.
TIME = st.one_of(
    st.floats(-5000, 5000).map(lambda d: T0 + d), st.sampled_from([T0, T0 - 61.0, T0 + 3601.0]),
    HOSTILE, st.floats(), st.integers(), st.none(),
)
RUNTIME = st.one_of(st.floats(0, 5000), HOSTILE, st.floats(), st.none())
ETA = st.one_of(st.none(), st.floats(-5000, 5000).map(
    lambda d: datetime.fromtimestamp(T0 + d, UTC).isoformat()), st.sampled_from(["soon", 5]))
TASK = st.fixed_dictionaries({
    "name": st.sampled_from(NAMES),
    "sent": st.booleans(),
    "sent_at": TIME, "eta": ETA, "received_at": TIME, "started": st.booleans(),
    "started_at": TIME, "end": st.sampled_from(sorted(TERMINAL)), "ended_at": TIME,
    "runtime": RUNTIME,
})
COUNT = st.one_of(st.integers(-3, 50), HOSTILE, st.floats(), st.none())


def eta_time(value: object) -> float | str | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else "bad"
    except ValueError:
        return "bad"


@dataclass
class Model:
    tasks: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    waits: Counter[tuple[str, str]] = field(default_factory=Counter)
    wait_sums: dict[tuple[str, str], float] = field(default_factory=dict)
    runtimes: Counter[tuple[str, str]] = field(default_factory=Counter)
    runtime_sums: dict[tuple[str, str], float] = field(default_factory=dict)
    dropped: Counter[str] = field(default_factory=Counter)

    def time(self, value: object) -> float | None:
        """A timestamp field as the docs say it is read: refused unless a finite number."""
        if value is None:
            return None
        if not is_time(value):
            self.dropped["invalid_time"] += 1
            return None
        return float(value)  # type: ignore[arg-type]

    def wait(self, key: tuple[str, str], started: float, reference: float) -> None:
        seconds = started - reference
        if not -SKEW <= seconds <= MAX_WAIT:
            self.dropped["implausible_time"] += 1
            return
        self.waits[key] += 1
        self.wait_sums[key] = self.wait_sums.get(key, 0.0) + max(seconds, 0.0)

    def runtime(self, key: tuple[str, str], seconds: float) -> None:
        if not 0 <= seconds <= MAX_RUNTIME:
            self.dropped["implausible_time"] += 1
            return
        self.runtimes[key] += 1
        self.runtime_sums[key] = self.runtime_sums.get(key, 0.0) + seconds


def task_events(i: int, task: dict[str, Any]) -> list[dict[str, Any]]:
    uuid = f"t-{i}"
    events = []
    if task["sent"]:
        events.append({"type": "task-sent", "uuid": uuid, "name": task["name"],
                       "queue": "default", "hostname": "web", "timestamp": task["sent_at"],
                       "eta": task["eta"]})
    events.append({"type": "task-received", "uuid": uuid, "name": task["name"],
                   "hostname": W, "timestamp": task["received_at"]})
    if task["started"]:
        events.append({"type": "task-started", "uuid": uuid, "hostname": W,
                       "timestamp": task["started_at"]})
    end = {"type": task["end"], "uuid": uuid, "hostname": W, "timestamp": task["ended_at"]}
    if task["end"] == "task-succeeded":
        end["runtime"] = task["runtime"]
    events.append(end)
    return events


def model_task(model: Model, task: dict[str, Any], label: str) -> None:
    queue = "default" if task["sent"] else "unknown"
    sent = eta = None
    if task["sent"]:
        sent = model.time(task["sent_at"])
        eta_at = eta_time(task["eta"])
        if eta_at == "bad":
            model.dropped["invalid_time"] += 1
        elif isinstance(eta_at, float):
            eta = eta_at
    received = model.time(task["received_at"])
    started = model.time(task["started_at"]) if task["started"] else None
    if started is not None:
        # Publish, else receipt (after the grace for a late task-sent); the ETA when later.
        reference, wait_from = (sent, "publish") if sent is not None else (received, "received")
        if reference is not None:
            if eta is not None and eta > reference:
                reference, wait_from = eta, "eta"
            model.wait((label, wait_from), started, reference)
    state = TERMINAL[task["end"]]
    model.tasks[(label, queue, state)] += 1
    if task["end"] == "task-succeeded" and task["runtime"] is not None:
        if is_time(task["runtime"]):
            model.runtime((label, state), float(task["runtime"]))
        else:
            model.dropped["invalid_time"] += 1
    if task["end"] == "task-failed":
        ended = model.time(task["ended_at"])
        if started is not None and ended is not None:
            model.runtime((label, state), ended - started)


@given(tasks=st.lists(TASK, max_size=10), heartbeats=st.lists(st.tuples(COUNT, COUNT),
                                                                max_size=3))
def test_any_sequence_of_events_gives_finite_series_and_the_models_totals(
    tasks: list[dict[str, Any]], heartbeats: list[tuple[Any, Any]]
) -> None:
    clock = FakeClock()
    config = ExporterConfig(
        broker_url="redis://127.0.0.1:1/0", max_task_names=MAX_TASK_NAMES,
        max_queue_wait=MAX_WAIT, max_runtime=MAX_RUNTIME, clock_skew_tolerance=SKEW,
    )
    exporter = Exporter(config, registry=CollectorRegistry(), clock=clock)
    try:
        model = Model()
        admitted: list[str] = []
        for active, processed in heartbeats:
            exporter.handlers.handle({"type": "worker-heartbeat", "hostname": W,
                                      "active": active, "processed": processed})
            for count in (active, processed):
                ok = is_time(count) and float(count) >= 0 and float(count).is_integer()
                model.dropped["invalid_number"] += count is not None and not ok
        for i, task in enumerate(tasks):
            for event in task_events(i, task):
                exporter.handlers.handle(event)
            if task["name"] not in admitted and len(admitted) < MAX_TASK_NAMES:
                admitted.append(task["name"])
            model_task(model, task, task["name"] if task["name"] in admitted else "__overflow__")
        clock.advance(SENT_EVENT_GRACE + 1)  # waits for a late task-sent settle
        exporter.handlers.handle({"type": "worker-heartbeat", "hostname": W})
        with exporter.instruments.collect_lock:
            text = generate_latest(exporter.registry).decode()
    finally:
        exporter.instruments.shutdown()
    check(text, model)


def check(text: str, model: Model) -> None:
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert all(math.isfinite(s.value) for s in samples)

    def values(name: str, *keys: str) -> Counter[tuple[str, ...]]:
        out: Counter[tuple[str, ...]] = Counter()
        for s in samples:
            if s.name == name and s.value:
                out[tuple(s.labels[k] for k in keys)] += s.value
        return out

    assert values("celery_tasks_total", "task_name", "queue", "state") == model.tasks
    assert values("celery_task_queue_wait_seconds_count", "task_name", "wait_from") == model.waits
    sums = values("celery_task_queue_wait_seconds_sum", "task_name", "wait_from")
    for key, expected in model.wait_sums.items():
        assert sums.get(key, 0.0) == pytest.approx(expected, rel=1e-9, abs=1e-6)
    assert values("celery_task_runtime_seconds_count", "task_name", "state") == model.runtimes
    sums = values("celery_task_runtime_seconds_sum", "task_name", "state")
    for key, expected in model.runtime_sums.items():
        assert sums.get(key, 0.0) == pytest.approx(expected, rel=1e-9, abs=1e-6)
    dropped = {k[0]: v for k, v in values(
        "celery_exporter_measurements_dropped_total", "reason").items()}
    assert dropped == {k: v for k, v in model.dropped.items() if v}
    assert not values("celery_exporter_events_dropped_total", "type", "reason")
    assert not any(v for k, v in values("celery_tasks_executing", "task_name").items())
    names = {s.labels["task_name"] for s in samples if "task_name" in s.labels}
    assert len(names - {"__overflow__"}) <= MAX_TASK_NAMES
    promtool_check(text)
