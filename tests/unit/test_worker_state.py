"""WorkerView: what the worker-state metrics read from Celery's own state, with an injected
clock. Real prefork workers prove the same on a running worker:
tests/integration/test_saturation.py."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.asynchronous.timer import Timer

from otel_celery_metrics.worker.state import WorkerView
from tests.unit.test_outcomes import NAME, World

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def fake_worker(timer: Timer, *, processes: int = 2, soft: float | None = None,
                autoscale_max: int | None = None) -> Any:
    return SimpleNamespace(
        pool=SimpleNamespace(num_processes=processes),
        consumer=SimpleNamespace(timer=timer),
        soft_time_limit=soft,
        autoscaler=SimpleNamespace(max_concurrency=autoscale_max) if autoscale_max else None,
    )


def started(request: Any, at: float) -> None:
    from celery.worker import state

    state.task_reserved(request)
    state.task_accepted(request)
    request.time_start = at


def test_eta_tasks_count_as_scheduled_not_reserved_and_both_as_prefetched(world: World) -> None:
    from celery.worker import state

    timer = Timer()
    view = WorkerView("dq")
    worker = fake_worker(timer)
    view._on_worker_init(sender=worker)
    eta, waiting = world.request(queue="q1"), world.request(queue="q1")
    timer.call_at(T0 + 3600, lambda _r: None, (eta,), priority=6)  # as Celery's strategy does
    timer.call_at(T0 + 3600, lambda: None, ())  # a timer entry that is no request
    state.task_reserved(waiting)
    try:
        assert list(view.scheduled()) == [(1.0, (NAME, "q1"))]
        assert list(view.reserved()) == [(1.0, (NAME, "q1"))]
        assert sorted(view.prefetched()) == [(1.0, (NAME, "q1"))] * 2
    finally:
        state.task_ready(waiting)
        timer.clear()


def test_oldest_age_per_task_and_queue_grows_and_is_gone_when_nothing_runs(
    world: World,
) -> None:
    from celery.worker import state

    clock = Clock()
    view = WorkerView("dq", clock=clock)
    old, young, other = (world.request(queue="q1"), world.request(queue="q1"),
                         world.request(queue="q2"))
    started(old, T0 - 30)
    started(young, T0 - 5)
    started(other, T0 - 1)
    try:
        assert sorted(view.oldest_executing_age()) == [(1.0, (NAME, "q2")), (30.0, (NAME, "q1"))]
        clock.now += 10
        assert dict((k, v) for v, k in view.oldest_executing_age())[(NAME, "q1")] == 40.0
    finally:
        for r in (old, young, other):
            state.task_ready(r)
    assert list(view.oldest_executing_age()) == []


def test_only_tasks_past_a_soft_time_limit_that_is_set_count(world: World) -> None:
    from celery.worker import state

    clock = Clock()
    view = WorkerView("dq", clock=clock)
    no_limit, own_limit = world.request(queue="q1"), world.request(queue="q1",
                                                                     timelimit=[None, 10])
    started(no_limit, T0 - 100)
    started(own_limit, T0 - 11)
    try:
        # Without a worker default, only the message's own limit applies.
        assert list(view.past_soft_time_limit()) == [(1.0, (NAME, "q1"))]
        clock.now = T0 - 2  # the same task, 9 s after its start: within its limit
        assert list(view.past_soft_time_limit()) == []
        clock.now = T0
        view._on_worker_init(sender=fake_worker(Timer(), soft=60))
        assert list(view.past_soft_time_limit()) == [(1.0, (NAME, "q1"))] * 2
    finally:
        for r in (no_limit, own_limit):
            state.task_ready(r)


def test_pool_size_and_autoscale_maximum_come_from_the_worker_once_it_exists() -> None:
    view = WorkerView("dq")
    assert list(view.pool_processes()) == []  # outside a worker: nothing, not 0
    assert list(view.pool_max_processes()) == []
    worker = fake_worker(Timer(), processes=3)
    view._on_worker_init(sender=worker)
    assert list(view.pool_processes()) == [(3.0, ())]
    assert list(view.pool_max_processes()) == [(3.0, ())]
    view._on_worker_init(sender=fake_worker(Timer(), processes=2, autoscale_max=8))
    assert list(view.pool_max_processes()) == [(8.0, ())]
    # A prefork pool before its processes start has no size yet.
    view._on_worker_init(sender=SimpleNamespace(pool=SimpleNamespace(_pool=None)))
    assert list(view.pool_processes()) == []


def test_gevents_timer_of_greenlets_is_read_the_same_way(world: World) -> None:
    """Under -P gevent the consumer's timer holds greenlets that carry their entry."""
    view = WorkerView("dq")
    eta = world.request(queue="q1")
    greenlet = SimpleNamespace(entry=SimpleNamespace(args=(eta,)), eta=T0 + 60)
    other = SimpleNamespace(entry=SimpleNamespace(args=()), eta=T0 + 60)
    worker = SimpleNamespace(consumer=SimpleNamespace(timer=SimpleNamespace(
        queue=[greenlet, other])))
    view._on_worker_init(sender=worker)
    assert list(view.scheduled()) == [(1.0, (NAME, "q1"))]


def test_pool_size_counts_once_for_every_queue_the_worker_consumes() -> None:
    view = WorkerView("dq")
    worker = fake_worker(Timer(), processes=3)
    view._on_worker_init(sender=worker)
    assert list(view.queue_processes()) == []  # the consumer has not started consuming yet
    worker.consumer.task_consumer = SimpleNamespace(
        queues=[SimpleNamespace(name="b"), SimpleNamespace(name="a")])
    assert list(view.queue_processes()) == [(3.0, ("a",)), (3.0, ("b",))]
