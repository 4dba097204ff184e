"""Signal receivers fed Celery's keyword arguments with fake tasks and requests; no worker."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._receivers import (
    PUBLISHED_AT_HEADER,
    QUEUE_FIELD,
    RECEIVED_AT_FIELD,
    TaskReceivers,
)
from otel_celery_metrics._safety import FailureLog

WALL = 1_700_000_000.0


class ListSink:
    """Collects (metric name, value, attributes dict) and counts flushes."""

    def __init__(self) -> None:
        self.points: list[tuple[str, float, dict[str, str]]] = []
        self.traced: list[tuple[int, int]] = []
        self.flushes = 0

    def emit(self, metric: int, value: float, attrs: tuple[str, ...]) -> None:
        spec = mt.METRICS[metric]
        self.points.append((spec.name, value, dict(zip(spec.attributes, attrs, strict=True))))

    def emit_traced(
        self, metric: int, value: float, attrs: tuple[str, ...], trace_id: int, span_id: int
    ) -> None:
        self.emit(metric, value, attrs)
        self.traced.append((trace_id, span_id))

    def flush(self) -> None:
        self.flushes += 1

    def named(self, spec: mt.MetricSpec) -> list[tuple[float, dict[str, str]]]:
        return [(v, a) for n, v, a in self.points if n == spec.name]


class RaisingSink(ListSink):
    def emit(self, metric: int, value: float, attrs: tuple[str, ...]) -> None:
        raise RuntimeError("sink broken")

    def flush(self) -> None:
        raise RuntimeError("flush broken")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(sink: ListSink | None = None) -> tuple[TaskReceivers, ListSink, Clock, Clock]:
    sink = sink or ListSink()
    clock, wall = Clock(100.0), Clock(WALL)
    receivers = TaskReceivers(sink, FailureLog(), "default-q", clock=clock, wall_clock=wall)
    return receivers, sink, clock, wall


def fake_task(name: str = "app.add", queue: str | None = "q1", **request: Any) -> Any:
    delivery_info = {"routing_key": queue} if queue else {}
    return SimpleNamespace(
        name=name, request=SimpleNamespace(delivery_info=delivery_info, eta=None, **request)
    )


def run(
    receivers: TaskReceivers, task: Any, state: str, task_id: str = "id-1",
    *, clock: Clock | None = None, seconds: float = 0.0,
) -> None:
    receivers.on_prerun(task_id=task_id, task=task)
    if clock is not None:
        clock.now += seconds
    receivers.on_postrun(task_id=task_id, task=task, state=state)


def test_a_successful_task_counts_its_state_and_runtime() -> None:
    receivers, sink, clock, _ = make()
    run(receivers, fake_task(), "SUCCESS", clock=clock, seconds=2.5)
    assert sink.named(mt.TASKS) == [
        (1, {"task_name": "app.add", "queue": "q1", "state": "SUCCESS"})
    ]
    assert sink.named(mt.TASK_RUNTIME) == [(2.5, {"task_name": "app.add", "queue": "q1"})]
    assert sink.flushes == 1  # a pool child sends its batch after every task


def test_the_queue_falls_back_to_what_the_main_process_noted_then_the_default() -> None:
    receivers, sink, _, _ = make()
    run(receivers, fake_task(queue=None, **{QUEUE_FIELD: "noted-q"}), "SUCCESS")
    run(receivers, fake_task(queue=None), "SUCCESS", task_id="id-2")
    queues = [a["queue"] for _, a in sink.named(mt.TASKS)]
    assert queues == ["noted-q", "default-q"]


def test_queue_wait_counts_from_publish_when_the_producer_is_instrumented() -> None:
    receivers, sink, _, _ = make()
    receivers.on_prerun(task_id="x", task=fake_task(**{PUBLISHED_AT_HEADER: WALL - 3}))
    assert sink.named(mt.TASK_QUEUE_WAIT) == [
        (3.0, {"task_name": "app.add", "queue": "q1", "wait_from": "publish"})
    ]


def test_queue_wait_falls_back_to_the_time_the_worker_received_the_message() -> None:
    receivers, sink, _, _ = make()
    receivers.on_prerun(task_id="x", task=fake_task(**{RECEIVED_AT_FIELD: WALL - 1.5}))
    assert sink.named(mt.TASK_QUEUE_WAIT) == [
        (1.5, {"task_name": "app.add", "queue": "q1", "wait_from": "received"})
    ]


def test_queue_wait_counts_from_a_later_eta() -> None:
    receivers, sink, _, _ = make()
    eta = datetime.fromtimestamp(WALL - 2, tz=timezone.utc).isoformat()
    task = fake_task(**{PUBLISHED_AT_HEADER: WALL - 60})
    task.request.eta = eta
    receivers.on_prerun(task_id="x", task=task)
    assert sink.named(mt.TASK_QUEUE_WAIT) == [
        (2.0, {"task_name": "app.add", "queue": "q1", "wait_from": "eta"})
    ]


def test_queue_wait_is_clamped_at_zero_when_clocks_disagree() -> None:
    receivers, sink, _, _ = make()
    receivers.on_prerun(task_id="x", task=fake_task(**{PUBLISHED_AT_HEADER: WALL + 30}))
    assert sink.named(mt.TASK_QUEUE_WAIT)[0][0] == 0.0


def test_no_reference_time_means_no_queue_wait_point() -> None:
    receivers, sink, _, _ = make()
    receivers.on_prerun(task_id="x", task=fake_task())
    assert sink.named(mt.TASK_QUEUE_WAIT) == []


def test_a_failure_in_the_task_counts_by_exception_class_and_once_as_failure() -> None:
    receivers, sink, _, _ = make()
    task = fake_task()
    receivers.on_prerun(task_id="id-1", task=task)
    receivers.on_failure(sender=task, task_id="id-1", exception=ValueError("secret"))
    receivers.on_postrun(task_id="id-1", task=task, state="FAILURE")
    assert sink.named(mt.TASK_FAILURES) == [
        (1, {"task_name": "app.add", "queue": "q1", "exception_type": "ValueError"})
    ]
    assert [a["state"] for _, a in sink.named(mt.TASKS)] == ["FAILURE"]
    assert "secret" not in repr(sink.points)


def test_a_failure_reported_from_the_main_process_without_prerun_counts_failure() -> None:
    # A lost pool child (WorkerLostError) or a hard time limit: Celery reports the
    # failure from the main process, where task_prerun never ran.
    receivers, sink, _, _ = make()
    task = fake_task(**{QUEUE_FIELD: "q1"})
    task.request.delivery_info = None
    receivers.on_failure(sender=task, task_id="lost", exception=RuntimeError("lost"))
    assert sink.named(mt.TASKS) == [
        (1, {"task_name": "app.add", "queue": "q1", "state": "FAILURE"})
    ]
    assert sink.named(mt.TASK_FAILURES)[0][1]["exception_type"] == "RuntimeError"
    assert sink.flushes == 1


def test_a_reject_is_not_counted_twice() -> None:
    # The task ran to task_postrun (REJECTED is counted from there or from
    # task_rejected); its task_failure from the main process must not add FAILURE.
    from celery.exceptions import Reject

    receivers, sink, _, _ = make()
    task = fake_task()

    run(receivers, task, "REJECTED")
    receivers.on_failure(sender=task, task_id="id-1", exception=Reject("no"))
    assert [a["state"] for _, a in sink.named(mt.TASKS)] == ["REJECTED"]
    assert sink.named(mt.TASK_FAILURES)[0][1]["exception_type"] == "Reject"


def test_a_user_exception_named_reject_from_the_main_process_is_a_failure() -> None:
    receivers, sink, _, _ = make()
    task = fake_task()

    class Reject(Exception):  # the user's own class, not Celery's
        pass

    receivers.on_failure(sender=task, task_id="id-9", exception=Reject("no"))
    assert [a["state"] for _, a in sink.named(mt.TASKS)] == ["FAILURE"]


def test_received_counts_and_notes_time_and_queue_on_the_request() -> None:
    receivers, sink, _, _ = make()
    request = SimpleNamespace(
        name="app.add", delivery_info={"routing_key": "q9"}, request_dict={}
    )
    receivers.on_received(request=request)
    assert sink.named(mt.TASKS_RECEIVED) == [(1, {"task_name": "app.add", "queue": "q9"})]
    assert request.request_dict == {RECEIVED_AT_FIELD: WALL, QUEUE_FIELD: "q9"}


def test_revoked_unknown_and_rejected_messages_count_their_state() -> None:
    receivers, sink, _, _ = make()
    receivers.on_revoked(sender=SimpleNamespace(name="app.add"),
                         request=SimpleNamespace(delivery_info={"routing_key": "q1"}))
    receivers.on_unknown(name="app.nope", message=SimpleNamespace(delivery_info={}))
    receivers.on_rejected(message=SimpleNamespace(headers={"task": "app.bad"},
                                                  delivery_info={"routing_key": "q2"}))
    assert [(a["task_name"], a["queue"], a["state"]) for _, a in sink.named(mt.TASKS)] == [
        ("app.add", "q1", "REVOKED"),
        ("app.nope", "default-q", "REJECTED"),
        ("app.bad", "q2", "REJECTED"),
    ]


def test_publish_stamps_the_header_and_counts_by_routing_key() -> None:
    receivers, sink, _, _ = make()
    headers: dict[str, Any] = {"task": "app.add"}
    receivers.on_before_publish(headers=headers)
    receivers.on_after_publish(sender="app.add", headers=headers, routing_key="q1")
    assert headers[PUBLISHED_AT_HEADER] == WALL
    assert sink.named(mt.TASKS_PUBLISHED) == [(1, {"task_name": "app.add", "queue": "q1"})]
    assert sink.flushes == 1  # published outside a task: flushed right away


def test_publishing_from_inside_a_task_leaves_flushing_to_the_task() -> None:
    receivers, sink, _, _ = make()
    receivers.on_prerun(task_id="t", task=fake_task())
    receivers.on_after_publish(sender="app.add", headers={"task": "app.add"}, routing_key="q")
    assert sink.flushes == 0


RECEIVER_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("on_before_publish", {"headers": {"task": "x"}}),
    ("on_after_publish", {"sender": "x", "headers": {"task": "x"}, "routing_key": "q"}),
    ("on_received", {"request": SimpleNamespace(name="x", delivery_info={}, request_dict={})}),
    ("on_prerun", {"task_id": "1", "task": fake_task(**{PUBLISHED_AT_HEADER: WALL})}),
    ("on_postrun", {"task_id": "1", "task": fake_task(), "state": "SUCCESS"}),
    ("on_failure", {"sender": fake_task(), "task_id": "1", "exception": ValueError()}),
    ("on_revoked", {"sender": fake_task(), "request": fake_task().request}),
    ("on_unknown", {"name": "x", "message": SimpleNamespace(delivery_info={})}),
    ("on_rejected", {"message": SimpleNamespace(headers={"task": "x"}, delivery_info={})}),
]


@pytest.mark.parametrize(("receiver", "kwargs"), RECEIVER_CALLS, ids=[r for r, _ in RECEIVER_CALLS])
def test_every_receiver_swallows_a_broken_sink(receiver: str, kwargs: dict[str, Any]) -> None:
    receivers, _, _, _ = make(RaisingSink())
    if receiver == "on_before_publish":
        receivers._wall_clock = lambda: 1 / 0  # type: ignore[assignment]  # its only dependency
    getattr(receivers, receiver)(**kwargs)
    assert receivers._failures.count >= 1


@pytest.mark.parametrize(("receiver", "kwargs"), RECEIVER_CALLS, ids=[r for r, _ in RECEIVER_CALLS])
def test_every_receiver_swallows_arguments_it_does_not_understand(
    receiver: str, kwargs: dict[str, Any]
) -> None:
    receivers, _, _, _ = make()
    garbage = dict.fromkeys(kwargs, object())
    getattr(receivers, receiver)(**garbage, unexpected="extra keyword")


def test_a_repeated_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    receivers, _, _, _ = make(RaisingSink())
    with caplog.at_level(logging.ERROR, logger="otel_celery_metrics"):
        for i in range(5):
            run(receivers, fake_task(), "SUCCESS", task_id=str(i))
    postrun_lines = [r for r in caplog.records if "task_postrun receiver" in r.getMessage()]
    assert len(postrun_lines) == 1
    assert "the task is unaffected" in postrun_lines[0].getMessage()


def test_connected_receivers_hear_celery_signals_until_disconnected() -> None:
    from celery import signals

    receivers, sink, _, _ = make()
    receivers.connect()
    receivers.connect()  # idempotent: no double counting
    try:
        signals.task_postrun.send(sender=None, task_id="1", task=fake_task(), state="SUCCESS")
        assert len(sink.named(mt.TASKS)) == 1
    finally:
        receivers.disconnect()
    signals.task_postrun.send(sender=None, task_id="2", task=fake_task(), state="SUCCESS")
    assert len(sink.named(mt.TASKS)) == 1
