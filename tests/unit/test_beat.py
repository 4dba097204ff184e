"""BeatHooks through Celery's real Scheduler (memory broker): sends, lateness and last-send
time per schedule entry. A real ``celery beat`` process: tests/integration/test_beat.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.beat import ScheduleEntry, Scheduler
from celery.schedules import schedule

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.recording.settings import Settings
from otel_celery_metrics.worker.beat import BeatHooks
from tests.unit.test_recorder import Harness, attrs

NOW = 1_800_000_000.0


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("beat_unit", broker="memory://", set_as_current=False)
    yield app
    app.close()


def entry(app: Celery, name: str, every: float, last_run_ago: float) -> ScheduleEntry:
    last = app.now() - timedelta(seconds=last_run_ago)
    return ScheduleEntry(name=name, task=f"app.{name}", schedule=schedule(every, app=app),
                         last_run_at=last, app=app)


def hooked(settings: Settings | None = None) -> tuple[Harness, BeatHooks]:
    h = Harness(settings or Settings())
    hooks = BeatHooks(h.recorder, h.failures, clock=lambda: NOW)
    hooks.install()
    return h, hooks


def test_each_send_counts_its_entry_lateness_and_time(app: Celery) -> None:
    h, hooks = hooked()
    try:
        scheduler = Scheduler(app, lazy=True)
        # Due 3 s ago (every 10 s, last run 13 s ago); the other exactly on time-ish.
        scheduler.apply_entry(entry(app, "nightly", 10, 13))
        scheduler.apply_entry(entry(app, "nightly", 10, 13))
        scheduler.apply_entry(entry(app, "ping", 5, 5))
        nightly, ping = (attrs(schedule_entry="nightly", task_name="app.nightly"),
                         attrs(schedule_entry="ping", task_name="app.ping"))
        assert h.points(mt.BEAT_SENDS) == {nightly: 2, ping: 1}
        assert h.points(mt.BEAT_LAST_SEND) == {nightly: NOW, ping: NOW}
        late = h.points(mt.BEAT_LATENESS)
        assert late[nightly].count == 2  # type: ignore[attr-defined]
        assert 5.9 < late[nightly].sum < 6.5  # type: ignore[attr-defined]
        assert late[ping].sum < 0.5  # type: ignore[attr-defined]
    finally:
        hooks.uninstall()
        h.provider.shutdown()


def test_a_send_that_raises_is_not_counted_and_beat_goes_on(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_down(*_: Any, **__: Any) -> None:
        raise ConnectionError("broker down")

    h, hooks = hooked()
    try:
        scheduler = Scheduler(app, lazy=True)
        monkeypatch.setattr(scheduler, "send_task", broker_down)
        scheduler.apply_entry(entry(app, "nightly", 10, 13))  # Celery logs, does not raise
        assert h.points(mt.BEAT_SENDS) == {}
        assert h.failures.count == 0
    finally:
        hooks.uninstall()
        h.provider.shutdown()


def test_entries_past_the_cap_become_overflow() -> None:
    h, hooks = hooked(Settings(max_task_names=2))
    try:
        for name in ("a", "b", "c"):
            hooks.sent(SimpleNamespace(name=name, task="app.same"), 0.0)
        assert set(h.points(mt.BEAT_SENDS)) == {
            attrs(schedule_entry=e, task_name="app.same") for e in ("a", "b", mt.OVERFLOW_VALUE)
        }
        assert h.overflow_count("schedule_entry") == 3  # counter, gauge and histogram
    finally:
        hooks.uninstall()
        h.provider.shutdown()


def test_uninstall_restores_celerys_scheduler() -> None:
    original = Scheduler.apply_async
    h, hooks = hooked()
    assert Scheduler.apply_async is not original
    hooks.uninstall()
    assert Scheduler.apply_async is original
    h.provider.shutdown()


class _Broken:
    """A schedule whose estimate comes from a stored time that is wrong or garbage."""

    def __init__(self, remaining: object) -> None:
        self._remaining = remaining

    def remaining_estimate(self, _last_run_at: Any) -> object:
        return self._remaining

    def is_due(self, _last_run_at: Any) -> tuple[bool, float]:
        return True, 60.0


@pytest.mark.parametrize(
    ("remaining", "reason"),
    [
        (timedelta(days=-3650), "implausible_time"),  # last run ten years ago
        (float("nan"), "invalid_time"),
        ("soon", "invalid_time"),
    ],
)
def test_an_implausible_lateness_is_refused_and_counted_and_the_send_still_counts(
    app: Celery, remaining: object, reason: str
) -> None:
    h, hooks = hooked()
    try:
        scheduler = Scheduler(app, lazy=True)
        bad = ScheduleEntry(name="stale", task="app.stale", schedule=_Broken(remaining),
                            last_run_at=app.now(), app=app)
        scheduler.apply_entry(bad)
        stale = attrs(schedule_entry="stale", task_name="app.stale")
        assert h.points(mt.BEAT_SENDS) == {stale: 1}
        assert stale not in h.points(mt.BEAT_LATENESS)
        assert h.points(mt.SELF_DROPPED)[attrs(reason=reason)] == 1
    finally:
        hooks.uninstall()
