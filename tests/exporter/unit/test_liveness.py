"""Worker liveness from heartbeats, with an injected clock."""

from __future__ import annotations

import logging

import pytest

from otel_celery_metrics.exporter.liveness import Liveness
from otel_celery_metrics.exporter.store import Caps
from tests.exporter.support import FakeClock


def make(clock: FakeClock, **kw: float) -> Liveness:
    options = {"timeout": 10.0, "forget_after": 60.0, "events_missing_after": 5.0} | kw
    return Liveness(
        caps=Caps({"task_name": 100, "queue": 100,
                   "worker": int(kw.pop("max_workers", 100))}),
        clock=clock,
        **{k: v for k, v in options.items() if k != "max_workers"},
    )


def test_a_silent_worker_goes_to_zero_then_is_forgotten(clock: FakeClock) -> None:
    live = make(clock)
    live.heartbeat("celery@a", active=2, processed=0)
    assert live.up() == {"celery@a": 1}
    assert live.active() == {"celery@a": 2}
    clock.advance(10.5)
    assert live.up() == {"celery@a": 0}, "a killed worker reads 0, it does not vanish"
    assert live.active() == {"celery@a": 0}
    assert live.expire() == []
    clock.advance(50)
    assert live.expire() == ["celery@a"]
    assert live.up() == {}
    assert live.forgotten_total == 1


def test_offline_is_zero_at_once_and_a_heartbeat_brings_it_back(clock: FakeClock) -> None:
    live = make(clock)
    live.heartbeat("celery@a", None, None)
    live.offline("celery@a")
    assert live.up() == {"celery@a": 0}
    live.heartbeat("celery@a", None, None)
    assert live.up() == {"celery@a": 1}


def test_two_nodes_on_one_host_stay_two_workers(clock: FakeClock) -> None:
    live = make(clock)
    live.heartbeat("w1@same-host", 0, 0)
    live.heartbeat("w2@same-host", 0, 0)
    assert live.up() == {"w1@same-host": 1, "w2@same-host": 1}


def test_worker_cap_counts_overflow(clock: FakeClock) -> None:
    caps = Caps({"task_name": 10, "queue": 10, "worker": 2})
    live = Liveness(timeout=10, forget_after=60, events_missing_after=5, caps=caps, clock=clock)
    for i in range(4):
        live.heartbeat(f"celery@{i}", 0, 0)
    assert len(live.up()) == 2
    assert caps.overflow == {("worker",): 2}


def test_processing_without_task_events_is_detected_and_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    live = make(clock)
    live.heartbeat("celery@quiet", 0, processed=10)
    live.heartbeat("celery@chatty", 0, processed=10)
    clock.advance(2)
    live.heartbeat("celery@quiet", 0, processed=15)
    live.task_event("celery@chatty")
    live.heartbeat("celery@chatty", 0, processed=15)
    assert live.without_task_events() == [], "not before the window has passed"
    clock.advance(6)
    live.heartbeat("celery@quiet", 0, processed=20)
    with caplog.at_level(logging.WARNING):
        assert live.without_task_events() == ["celery@quiet"]
    assert "celery@quiet is processing tasks but sends no task events" in caplog.text
    live.task_event("celery@quiet")
    assert live.without_task_events() == []


def test_an_idle_worker_is_not_reported_as_events_disabled(clock: FakeClock) -> None:
    live = make(clock)
    for _ in range(10):
        live.heartbeat("celery@idle", 0, processed=3)
        clock.advance(2)
    assert live.without_task_events() == []
