"""Task outcomes from Celery's real request classes and callbacks, recorded into a real SDK.

No worker and no broker: the requests are built by Celery's own
``strategy.create_request_cls`` (with our hooks installed) from kombu messages, and their
callbacks are called the way a pool calls them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded, WorkerLostError
from kombu import Message
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER, RECEIVED_AT_FIELD
from otel_celery_metrics.core.routing import DELIVERED_FROM
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.settings import Settings
from otel_celery_metrics.worker.outcomes import RequestHooks, TaskOutcomes
from otel_celery_metrics.worker.signals import TaskReceivers
from tests.unit.sdk_hook import hooked_recorder

NAME = "app.work"


class _Pool:
    apply_async = None


class World:
    """A Celery app, our outcomes wired to an SDK reader, and a request factory."""

    def __init__(self) -> None:
        self.app = Celery("outcomes", broker="memory://", set_as_current=False)
        self.app.conf.task_ignore_result = True

        @self.app.task(name=NAME, shared=False)
        def work() -> None:
            return None

        self.app.finalize()
        self.task = self.app.tasks[NAME]
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        self.failures = FailureLog()
        self.recorder, _ = hooked_recorder(self.provider, Settings(), self.failures)
        self.outcomes = TaskOutcomes(self.recorder, self.failures, default_queue="dq")
        self.hooks = RequestHooks(self.outcomes)
        self.hooks.install()
        self.receivers = TaskReceivers(
            self.recorder, self.failures, "dq", outcomes=self.outcomes  # type: ignore[arg-type]
        )
        self.receivers.connect()
        from celery.worker import strategy
        from celery.worker.request import Request

        self.request_cls = strategy.create_request_cls(
            Request, self.task, _Pool(), "host", None, app=self.app
        )
        self.count = 0

    def close(self) -> None:
        self.receivers.disconnect()
        self.hooks.uninstall()
        self.provider.shutdown()

    def request(self, queue: str | None = "q1", routing_key: str = "rk.user42",
                **headers: Any) -> Any:
        self.count += 1
        task_id = f"id-{self.count}"
        message = Message(
            body=b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
            headers={"lang": "py", "task": NAME, "id": task_id, "root_id": task_id,
                     "retries": 0, "eta": None, "expires": None, **headers},
            content_type="application/json", content_encoding="utf-8",
            # As the consume hook stamps it; the routing key is never the label.
            delivery_info=(
                {"routing_key": f"rk.{queue}.user42", "exchange": "x", DELIVERED_FROM: queue}
                if queue else {"routing_key": routing_key, "exchange": "x"}
            ),
        )
        return self.request_cls(message, on_ack=lambda *_: None, app=self.app, task=self.task,
                                hostname="host")

    def points(self, spec: mt.MetricSpec) -> dict[frozenset[tuple[str, str]], Any]:
        data = self.reader.get_metrics_data()
        out: dict[frozenset[tuple[str, str]], Any] = {}
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == spec.name:
                        for p in metric.data.data_points:
                            key = frozenset((p.attributes or {}).items())
                            out[key] = getattr(p, "value", p)
        return out

    def states(self) -> dict[str, float]:
        return {dict(k)["state"]: v for k, v in self.points(mt.TASKS).items() if v}


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


def einfo(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:  # noqa: BLE001
        return ExceptionInfo()


def accept(request: Any, seconds_ago: float = 0.0) -> None:
    request.on_accepted(4242, time.monotonic() - seconds_ago)


def test_a_success_counts_its_state_runtime_and_queue_wait(world: World) -> None:
    request = world.request()
    # Received (and stamped by us) 3 s before a pool process accepted it.
    assert abs(request.request_dict[RECEIVED_AT_FIELD] - time.time()) < 1.0
    request.request_dict[RECEIVED_AT_FIELD] -= 3.0
    assert type(request).__mro__[1] is world.request_cls.__mro__[1]  # ours wraps Celery's
    accept(request)
    request.on_success((0, "result", 0.25))
    assert world.states() == {"SUCCESS": 1}
    received = {k: v for k, v in world.points(mt.TASKS_RECEIVED).items() if v}
    assert received == {frozenset({("task_name", NAME), ("queue", "q1")}): 1}
    ((attrs, runtime),) = world.points(mt.TASK_RUNTIME).items()
    assert dict(attrs) == {"task_name": NAME, "queue": "q1", "state": "SUCCESS"}
    assert runtime.count == 1
    assert runtime.sum == 0.25  # Celery's own runtime, as in its "succeeded in" line
    ((attrs, wait),) = world.points(mt.TASK_QUEUE_WAIT).items()
    assert dict(attrs)["wait_from"] == "received"
    assert 2.9 < wait.sum < 4.0


def test_queue_wait_counts_from_publish_then_a_later_eta(world: World) -> None:
    published = world.request(**{PUBLISHED_AT_HEADER: time.time() - 5.0})
    accept(published)
    published.on_success((0, None, 0.1))
    eta = (time.time() - 1.0)
    from datetime import datetime, timezone

    later = world.request(**{PUBLISHED_AT_HEADER: time.time() - 60.0,
                             "eta": datetime.fromtimestamp(eta, timezone.utc).isoformat()})
    accept(later)
    later.on_success((0, None, 0.1))
    waits = {dict(k)["wait_from"]: p.sum for k, p in world.points(mt.TASK_QUEUE_WAIT).items()}
    assert 4.9 < waits["publish"] < 6.0
    assert 0.9 < waits["eta"] < 2.0


def test_a_negative_wait_from_clock_skew_is_clamped_at_zero(world: World) -> None:
    request = world.request(**{PUBLISHED_AT_HEADER: time.time() + 30.0})
    accept(request)
    request.on_success((0, None, 0.1))
    ((_, wait),) = world.points(mt.TASK_QUEUE_WAIT).items()
    assert wait.sum == 0


# The hostile publish headers: (header value, the refusal's reason, the wait_from
# the wait is then measured from, or None when no wait is recorded).
HOSTILE_HEADERS: list[tuple[object, str, str | None]] = [
    (-1e300, "implausible_time", None),
    (float("-inf"), "invalid_time", "received"),
    (float("nan"), "invalid_time", "received"),
    (True, "invalid_time", "received"),
    ("1700000000", "invalid_time", "received"),
    ([1, 2], "invalid_time", "received"),
    (time.time() + 10 * 365 * 86_400, "implausible_time", None),  # 10 years ahead
    (time.time() + 3600, "implausible_time", None),  # a producer 1 h ahead
    (10**400, "invalid_time", "received"),  # an int no float can hold
]


@pytest.mark.parametrize(("header", "reason", "wait_from"), HOSTILE_HEADERS)
def test_a_hostile_publish_header_is_refused_and_counted_and_the_task_still_counts(
    world: World, caplog: pytest.LogCaptureFixture, header: object, reason: str,
    wait_from: str | None,
) -> None:
    for _ in range(2):
        request = world.request(**{PUBLISHED_AT_HEADER: header})
        accept(request)
        request.on_success((0, None, 0.1))
    assert world.states() == {"SUCCESS": 2}
    waits = world.points(mt.TASK_QUEUE_WAIT)
    assert {dict(k)["wait_from"] for k in waits} == ({wait_from} if wait_from else set())
    assert all(math.isfinite(p.sum) and 0 <= p.sum < 5 for p in waits.values())
    dropped = {dict(k)["reason"]: v for k, v in world.points(mt.SELF_DROPPED).items() if v}
    assert dropped == {reason: 2}
    lines = [r.getMessage() for r in caplog.records if "was not recorded" in r.getMessage()]
    assert len(lines) == 1  # once per reason and task name
    assert NAME in lines[0]
    assert f'otel_celery_metrics_dropped_total{{reason="{reason}"}}' in lines[0]
    assert "1700000000" not in lines[0]  # a value is described, never echoed


def test_a_failure_reported_twice_counts_its_bad_header_once(world: World) -> None:
    request = world.request(**{PUBLISHED_AT_HEADER: float("nan")})
    accept(request, seconds_ago=1.0)
    request.on_timeout(False, 5.0)  # Celery reports a hard time limit twice
    request.on_failure(einfo(TimeLimitExceeded(5.0)))
    assert world.states() == {"FAILURE": 1}
    dropped = {dict(k)["reason"]: v for k, v in world.points(mt.SELF_DROPPED).items() if v}
    assert dropped == {"invalid_time": 1}


def test_the_bounds_come_from_the_settings(world: World) -> None:
    from celery.worker import state

    from otel_celery_metrics.core.values import Bounds

    outcomes = TaskOutcomes(world.recorder, world.failures, "dq",
                            bounds=Bounds(max_queue_wait=10.0, clock_skew_tolerance=1.0))
    for offset in (-20.0, -5.0, 0.5, 5.0):  # waits of 20 s, 5 s, -0.5 s, -5 s
        request = world.request(**{PUBLISHED_AT_HEADER: time.time() + offset})
        accept(request)
        outcomes.finished(request, (0, None, 0.1), NAME)
        state.task_ready(request)  # as Celery's own on_success would
    ((_, wait),) = world.points(mt.TASK_QUEUE_WAIT).items()
    assert wait.count == 2
    assert 4.5 < wait.sum < 6.0
    dropped = {dict(k)["reason"]: v for k, v in world.points(mt.SELF_DROPPED).items() if v}
    assert dropped == {"implausible_time": 2}


@pytest.mark.parametrize(
    ("exc", "state", "failure_class"),
    [
        (ValueError("boom"), "FAILURE", "ValueError"),
        (Retry("again"), "RETRY", None),
        (Ignore(), "IGNORED", None),
        (Reject("no", requeue=False), "REJECTED", "Reject"),
        (Reject("later", requeue=True), "REJECTED", None),
    ],
)
def test_raised_outcomes_count_their_state_and_runtime(
    world: World, exc: BaseException, state: str, failure_class: str | None
) -> None:
    request = world.request()
    accept(request, seconds_ago=2.0)
    # What a pool hands back for an execution that raised: Celery timed nothing.
    request.on_success((1, einfo(exc), None))
    assert world.states() == {state: 1}
    failures = {dict(k)["exception_type"]: v for k, v in world.points(mt.TASK_FAILURES).items()}
    assert failures == ({failure_class: 1} if failure_class else {})
    ((attrs, runtime),) = world.points(mt.TASK_RUNTIME).items()
    assert dict(attrs)["state"] == state  # failed runs separable from successful ones
    assert runtime.count == 1
    assert 1.9 < runtime.sum < 3.0  # from acceptance to the result


def test_a_lost_pool_process_counts_one_failure_without_runtime(world: World) -> None:
    request = world.request()
    accept(request)
    request.on_failure(einfo(WorkerLostError("lost")))
    assert world.states() == {"FAILURE": 1}
    failures = {dict(k)["exception_type"]: v for k, v in world.points(mt.TASK_FAILURES).items()}
    assert failures == {"WorkerLostError": 1}
    runtime = world.points(mt.TASK_RUNTIME)
    assert all(p.count == 0 for p in runtime.values())
    # It did wait in the queue before it started: that point is recorded.
    assert sum(p.count for p in world.points(mt.TASK_QUEUE_WAIT).values()) == 1


def test_a_hard_time_limit_reported_twice_by_celery_counts_once(world: World) -> None:
    request = world.request()
    accept(request)
    request.on_timeout(False, 5.0)
    request.on_failure(einfo(TimeLimitExceeded(5.0)))
    assert world.states() == {"FAILURE": 1}
    failures = {dict(k)["exception_type"]: v for k, v in world.points(mt.TASK_FAILURES).items()}
    assert failures == {"TimeLimitExceeded": 1}


def test_a_soft_time_limit_warning_counts_nothing(world: World) -> None:
    request = world.request()
    accept(request)
    request.on_timeout(True, 1.0)
    assert world.states() == {}


def test_task_failure_signals_from_a_task_itself_are_left_to_the_result(world: World) -> None:
    # Under solo/threads, task_failure fires in-process while the task fails; the
    # result's on_success counts it (once).
    from celery import signals

    request = world.request()
    accept(request)
    signals.task_failure.send(sender=world.task, task_id=request.id, exception=ValueError())
    request.on_success((1, einfo(ValueError("x")), None))
    assert world.states() == {"FAILURE": 1}


def test_every_callback_labels_the_queue_the_message_was_consumed_from(world: World) -> None:
    request = world.request(queue="images")
    accept(request)
    request.on_success((0, None, 0.1))
    for spec in (mt.TASKS, mt.TASKS_RECEIVED, mt.TASK_RUNTIME):
        assert [dict(k)["queue"] for k in world.points(spec)] == ["images"], spec.name
    # It travels with Celery's request (the worker state and pool children see it too).
    assert request.delivery_info[DELIVERED_FROM] == "images"


def test_a_shadow_name_counts_under_the_registered_task_name(world: World) -> None:
    request = world.request(shadow="report.for.user42")  # a name chosen per message
    accept(request)
    request.on_success((0, None, 0.1))
    assert [dict(k)["task_name"] for k in world.points(mt.TASKS)] == [NAME]


def test_an_unstamped_message_counts_under_the_default_queue_not_its_routing_key(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("ERROR"):
        for _ in range(2):
            request = world.request(queue=None)  # routing key "rk.user42", no stamp
            accept(request)
            request.on_success((0, None, 0.1))
    assert sorted(dict(k)["queue"] for k in world.points(mt.TASKS)) == ["dq"]
    errors = [r for r in caplog.records if "before instrumentation" in r.getMessage()]
    assert len(errors) == 1  # said once, not per message


def test_an_unstamped_message_whose_routing_key_names_a_consumed_queue_counts_there(
    world: World,
) -> None:
    request = world.request(queue=None, routing_key="celery")  # the app's default queue
    accept(request)
    request.on_success((0, None, 0.1))
    assert [dict(k)["queue"] for k in world.points(mt.TASKS)] == ["celery"]


def test_a_broken_recorder_never_breaks_celery_callbacks(world: World) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("recorder broken")

    world.outcomes._recorder = type("R", (), {"task_ended": broken, "emit": broken})()
    request = world.request()
    accept(request)
    request.on_success((0, None, 0.1))  # must not raise
    request2 = world.request()
    accept(request2)
    request2.on_success((1, einfo(ValueError()), None))
    assert world.failures.count >= 2


def test_uninstalling_restores_celerys_request_class_factory(world: World) -> None:
    from celery.worker import strategy
    from celery.worker.request import Request

    world.hooks.uninstall()
    plain = strategy.create_request_cls(Request, world.task, _Pool(), "host", None, app=world.app)
    assert "otel_celery_metrics" not in plain.on_success.__module__
    world.hooks.install()
    ours = strategy.create_request_cls(Request, world.task, _Pool(), "host", None, app=world.app)
    assert ours.on_success.__module__ == "otel_celery_metrics.worker.outcomes"


def test_executing_and_prefetched_label_the_registered_name_and_consumed_queue(
    world: World,
) -> None:
    from celery.worker import state

    from otel_celery_metrics.worker.state import WorkerView

    view = WorkerView("dq")
    request = world.request(queue="images", shadow="report.for.user42")
    state.task_reserved(request)
    try:
        assert list(view.prefetched()) == [(1.0, (NAME, "images"))]
        assert list(view.reserved()) == [(1.0, (NAME, "images"))]
        state.task_accepted(request)
        assert list(view.executing()) == [(1.0, (NAME, "images"))]
        assert list(view.prefetched()) == []
    finally:
        state.task_ready(request)
