"""Signal receivers fed Celery's keyword arguments with fake tasks and requests; no worker.

Task outcomes are recorded from request callbacks (tests/unit/test_outcomes.py); the
receivers here count publishes and the main process' own events, and note exemplar spans.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER
from otel_celery_metrics.core.routing import DELIVERED_FROM
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.worker.signals import TaskReceivers

WALL = 1_700_000_000.0


class ListSink:
    """Collects (metric name, value, attributes dict) and counts flushes."""

    def __init__(self) -> None:
        self.points: list[tuple[str, float, dict[str, str]]] = []
        self.spans: list[tuple[str, int, int]] = []
        self.flushes = 0

    def points_with_attributes(self) -> list[tuple[str, dict[str, str]]]:
        return [(name, attrs) for name, _value, attrs in self.points]

    def emit(self, metric: int, value: float, attrs: tuple[str, ...]) -> None:
        spec = mt.METRICS[metric]
        self.points.append((spec.name, value, dict(zip(spec.attributes, attrs, strict=True))))

    def span(self, task_id: str, trace_id: int, span_id: int) -> None:
        self.spans.append((task_id, trace_id, span_id))

    def flush(self) -> None:
        self.flushes += 1

    def named(self, spec: mt.MetricSpec) -> list[tuple[float, dict[str, str]]]:
        return [(v, a) for n, v, a in self.points if n == spec.name]


class RaisingSink(ListSink):
    def points_with_attributes(self) -> list[tuple[str, dict[str, str]]]:
        return [(name, attrs) for name, _value, attrs in self.points]

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
    receivers = TaskReceivers(sink, FailureLog(), "default-q", wall_clock=wall)
    return receivers, sink, clock, wall


def fake_task(name: str = "app.add", queue: str | None = "q1", **request: Any) -> Any:
    delivery_info = {"routing_key": "rk", DELIVERED_FROM: queue} if queue else {}
    return SimpleNamespace(
        name=name, request=SimpleNamespace(delivery_info=delivery_info, eta=None, **request)
    )


def test_revoked_unknown_and_rejected_messages_count_their_state() -> None:
    receivers, sink, _, _ = make()
    receivers.on_revoked(sender=SimpleNamespace(name="app.add"),
                         request=SimpleNamespace(delivery_info={"routing_key": "k.1",
                                                                DELIVERED_FROM: "q1"}))
    receivers.on_unknown(name="app.nope", message=SimpleNamespace(delivery_info={}))
    receivers.on_rejected(message=SimpleNamespace(headers={"task": "app.bad"},
                                                  delivery_info={"routing_key": "k.2",
                                                                 DELIVERED_FROM: "q2"}))
    assert [(a["task_name"], a["queue"], a["state"]) for _, a in sink.named(mt.TASKS)] == [
        ("app.add", "q1", "REVOKED"),
        ("app.nope", "default-q", "REJECTED"),
        ("app.bad", "q2", "REJECTED"),
    ]


def test_publish_stamps_the_header_and_counts_by_the_resolved_queue() -> None:
    from kombu import Exchange, Queue

    receivers, sink, _, _ = make()
    images = Queue("images", Exchange("media", type="topic"), routing_key="images.#")
    headers: dict[str, Any] = {"task": "app.add"}
    receivers.on_before_publish(headers=headers, declare=[images], exchange="media",
                                routing_key="images.resize.user0")
    receivers.on_after_publish(sender="app.add", headers=headers, exchange="media",
                               routing_key="images.resize.user0")
    assert headers[PUBLISHED_AT_HEADER] == WALL
    assert sink.named(mt.TASKS_PUBLISHED) == [(1, {"task_name": "app.add", "queue": "images"})]
    assert sink.flushes == 1  # a pool child sends it right away


def test_exemplar_receivers_send_the_span_the_task_ran_in() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    receivers, sink, _, _ = make()
    tracer = TracerProvider().get_tracer("test")
    # The tracing instrumentation may open its span before or after our prerun receiver.
    with tracer.start_as_current_span("task-a") as span_a:
        receivers.on_prerun(task_id="a")
    receivers.on_postrun(task_id="a")
    receivers.on_prerun(task_id="b")
    with tracer.start_as_current_span("task-b") as span_b:
        receivers.on_postrun(task_id="b")
    receivers.on_prerun(task_id="c")  # no span at all: nothing sent
    receivers.on_postrun(task_id="c")
    expected = [
        ("a", span_a.get_span_context().trace_id, span_a.get_span_context().span_id),
        ("b", span_b.get_span_context().trace_id, span_b.get_span_context().span_id),
    ]
    assert sink.spans == expected
    assert sink.flushes == 2
    assert trace.get_current_span().get_span_context().is_valid is False


RECEIVER_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("on_before_publish", {"headers": {"task": "x"}}),
    ("on_after_publish", {"sender": "x", "headers": {"task": "x"}, "routing_key": "q"}),
    ("on_prerun", {"task_id": "1"}),
    ("on_postrun", {"task_id": "1"}),
    ("on_revoked", {"sender": fake_task(), "request": fake_task().request}),
    ("on_unknown", {"name": "x", "message": SimpleNamespace(delivery_info={})}),
    ("on_rejected", {"message": SimpleNamespace(headers={"task": "x"}, delivery_info={})}),
]


@pytest.mark.parametrize(("receiver", "kwargs"), RECEIVER_CALLS, ids=[r for r, _ in RECEIVER_CALLS])
def test_every_receiver_swallows_a_broken_sink(receiver: str, kwargs: dict[str, Any]) -> None:
    receivers, _, _, _ = make(RaisingSink())
    if receiver == "on_before_publish":
        receivers._wall_clock = lambda: 1 / 0  # type: ignore[assignment]  # its only dependency
    if receiver in ("on_prerun", "on_postrun"):
        # Their only dependency is the current span.
        import otel_celery_metrics.worker.signals as module

        original = module._sampled_span
        module._sampled_span = lambda: (1, 2)  # type: ignore[assignment]
        try:
            receivers.on_prerun(task_id="1")
            receivers.on_postrun(task_id="1")
        finally:
            module._sampled_span = original  # type: ignore[assignment]
    else:
        getattr(receivers, receiver)(**kwargs)
    assert receivers._failures.count >= 1


@pytest.mark.parametrize(("receiver", "kwargs"), RECEIVER_CALLS, ids=[r for r, _ in RECEIVER_CALLS])
def test_every_receiver_swallows_arguments_it_does_not_understand(
    receiver: str, kwargs: dict[str, Any]
) -> None:
    receivers, sink, _, _ = make()
    garbage = dict.fromkeys(kwargs, object())
    getattr(receivers, receiver)(**garbage, unexpected="extra keyword")  # must not raise
    # Whatever was recorded from garbage is bounded text (never an object's repr with an
    # address, a new series per call), and a failure is contained and counted, not lost.
    for _name, attrs in sink.points_with_attributes():
        assert all(isinstance(v, str) and "object at 0x" not in v for v in attrs.values())
    assert receivers._failures.count <= 1


def test_a_repeated_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    receivers, _, _, _ = make(RaisingSink())
    message = SimpleNamespace(delivery_info={})
    with caplog.at_level(logging.ERROR, logger="otel_celery_metrics"):
        for _ in range(5):
            receivers.on_unknown(name="x", message=message)
    lines = [r for r in caplog.records if "task_unknown receiver" in r.getMessage()]
    assert len(lines) == 1
    assert "the task is unaffected" in lines[0].getMessage()


def test_connected_receivers_hear_celery_signals_until_disconnected() -> None:
    from celery import signals

    receivers, sink, _, _ = make()
    receivers.connect()
    receivers.connect()  # idempotent: no double counting
    try:
        signals.task_unknown.send(sender=None, name="x", message=SimpleNamespace(delivery_info={}))
        assert len(sink.named(mt.TASKS)) == 1
        # Without exemplars, no per-task signal reaches our receivers.
        assert all(
            "otel_celery_metrics" not in str(key)
            for key, _ in signals.task_prerun.receivers + signals.task_postrun.receivers
        )
    finally:
        receivers.disconnect()
    signals.task_unknown.send(sender=None, name="x", message=SimpleNamespace(delivery_info={}))
    assert len(sink.named(mt.TASKS)) == 1
