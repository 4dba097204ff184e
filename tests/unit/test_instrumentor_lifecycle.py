"""The instrumentor on one SDK provider: reversible, and loud when a hook does not take effect.

Requests are built the way a worker builds them, through Celery's real
``celery.worker.strategy.default()`` handling a kombu message; their callbacks are called
the way the pool calls them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery, signals
from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.worker import state as worker_state
from celery.worker import strategy
from celery.worker.request import Request
from kombu import Message
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.instrumentor import METER_NAME, CeleryMetricsInstrumentor
from otel_celery_metrics.recording.settings import Settings

NAME = "app.work"


class _Pool:
    apply_async = None


class _Consumer:
    """The attributes of a worker consumer that ``strategy.default()`` reads."""

    def __init__(self, on_task_request: Any) -> None:
        self.hostname = "w@host"
        self.connection_errors = ()
        self.event_dispatcher = None
        self.timer = SimpleNamespace(call_at=None)
        self.apply_eta_task = None
        self.disable_rate_limits = True
        self.task_buckets: dict[str, Any] = {}
        self.on_task_request = on_task_request
        self._limit_task = self._limit_post_eta = None
        self.pool = _Pool()
        self.controller = SimpleNamespace(state=SimpleNamespace(revoked=set()))


class Worker:
    """A Celery app and the part of a worker consumer ``strategy.default()`` reads."""

    def __init__(self, request_class: str = "celery.worker.request:Request") -> None:
        self.app = Celery("lifecycle", broker="memory://", set_as_current=False)
        self.app.conf.task_ignore_result = True

        @self.app.task(name=NAME, shared=False, Request=request_class)
        def work() -> None:
            return None

        self.app.finalize()
        self.task = self.app.tasks[NAME]
        self.requests: list[Any] = []
        self.consumer = _Consumer(self.requests.append)
        self.count = 0

    def start(self) -> Any:
        """What a worker does at start: build the task's strategy, then say it is ready."""
        handler = strategy.default(self.task, self.app, self.consumer)
        signals.worker_ready.send(sender=self.consumer)
        return handler

    def run(self, handler: Any, outcome: str = "success", **failure_kwargs: Any) -> Any:
        self.count += 1
        task_id = f"id-{self.count}"
        message = Message(
            body=b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
            headers={"lang": "py", "task": NAME, "id": task_id, "root_id": task_id,
                     "retries": 0, "eta": None, "expires": None},
            content_type="application/json", content_encoding="utf-8",
            delivery_info={"routing_key": "q1", "exchange": ""},
        )
        handler(message, None, lambda *_: None, lambda *_: None, [])
        request = self.requests.pop()
        worker_state.reserved_requests.discard(request)
        request.on_accepted(4242, 0.0)
        if outcome == "success":
            request.on_success((False, None, 0.25), inherit_parent_priority=False)
        elif outcome == "lost":
            try:
                raise WorkerLostError("lost")
            except WorkerLostError:
                einfo = ExceptionInfo()
            request.on_failure(einfo, **failure_kwargs)
        return request


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Metric name -> points, for our scope; a metric exported twice appears twice."""
    out: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            if sm.scope.name not in (METER_NAME,):
                continue
            for metric in sm.metrics:
                out.setdefault(metric.name, []).append(metric.data.data_points)
    return out


def state_total(found: dict[str, list[Any]], state: str) -> float:
    (series,) = found[mt.TASKS.name]
    return sum(p.value for p in series if p.attributes.get("state") == state)


def inactive(found: dict[str, list[Any]]) -> dict[str, float]:
    (series,) = found[mt.SELF_HOOK_INACTIVE.name]
    return {p.attributes["hook"]: p.value for p in series}


@pytest.fixture
def worker() -> Iterator[Worker]:
    yield Worker()


@pytest.fixture
def instrumentor() -> Iterator[CeleryMetricsInstrumentor]:
    inst = CeleryMetricsInstrumentor()
    yield inst
    if inst.is_instrumented_by_opentelemetry:
        inst.uninstrument()


def test_instrument_uninstrument_instrument_reports_each_metric_once_and_exact(
    worker: Worker, instrumentor: CeleryMetricsInstrumentor
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    collect_before = reader._collect
    instrumentor.instrument(meter_provider=provider, settings=Settings())
    handler = worker.start()
    for _ in range(3):
        worker.run(handler)
    assert state_total(points(reader), "SUCCESS") == 3
    instrumentor.uninstrument()
    # The provider as we found it: the reader's collection is the SDK's own again.
    assert reader._collect == collect_before
    instrumentor.instrument(meter_provider=provider, settings=Settings())
    handler = worker.start()
    for _ in range(2):
        worker.run(handler)
    worker.run(handler, outcome="lost")
    found = points(reader)
    for spec in mt.METRICS:
        if spec.kind is not mt.InstrumentKind.HISTOGRAM or spec is mt.TASK_RUNTIME:
            assert len(found.get(spec.name, [[]])) == 1, f"{spec.name} exported twice"
    # Exact, and from the current instrumentation only.
    assert state_total(found, "SUCCESS") == 2
    assert state_total(found, "FAILURE") == 1
    (runtime,) = found[mt.TASK_RUNTIME.name]
    assert sum(p.count for p in runtime) == 2
    assert inactive(found) == dict.fromkeys(mt.HOOKS, 0)
    provider.shutdown()


def test_a_celery_that_builds_requests_another_way_is_reported_and_tasks_still_run(
    worker: Worker, instrumentor: CeleryMetricsInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor.instrument(meter_provider=provider, settings=Settings())
    ours = strategy.create_request_cls
    strategy.create_request_cls = ours.__wrapped__  # this "Celery" never calls our hook
    try:
        with caplog.at_level(logging.ERROR, logger="otel_celery_metrics"):
            handler = worker.start()
        request = worker.run(handler)
    finally:
        strategy.create_request_cls = ours
    assert request.acknowledged or request.task_id  # Celery's own request ran to its end
    (line,) = [r for r in caplog.records if "hook is inactive" in r.getMessage()]
    message = line.getMessage()
    assert "the request_class hook is inactive" in message
    assert "celery " in message
    assert "opentelemetry-sdk " in message
    found = points(reader)
    assert inactive(found) == {"request_class": 1, "collection": 0, "pool_child_silencing": 0}
    provider.shutdown()


def test_a_reader_without_the_private_collect_hook_is_reported_and_histograms_still_appear(
    worker: Worker, instrumentor: CeleryMetricsInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    # An SDK whose readers no longer keep the temporality table where we read it.
    saved = reader._instrument_class_temporality
    del reader._instrument_class_temporality
    try:
        instrumentor.instrument(meter_provider=provider, settings=Settings())
        with caplog.at_level(logging.ERROR, logger="otel_celery_metrics"):
            handler = worker.start()
        worker.run(handler)
    finally:
        reader._instrument_class_temporality = saved
    (line,) = [r for r in caplog.records if "hook is inactive" in r.getMessage()]
    assert "the collection hook is inactive" in line.getMessage()
    assert "_instrument_class_temporality" in line.getMessage()
    found = points(reader)
    assert inactive(found) == {"request_class": 0, "collection": 1, "pool_child_silencing": 0}
    # Histograms fall back to the metrics API: slower, but not missing.
    (runtime,) = found[mt.TASK_RUNTIME.name]
    assert sum(p.count for p in runtime) == 1
    assert state_total(found, "SUCCESS") == 1
    provider.shutdown()


class NewerCeleryRequest(Request):  # type: ignore[misc]
    """A Celery whose callbacks take a keyword this package has never heard of."""

    seen: ClassVar[list[object]] = []

    def on_failure(self, exc_info: Any, send_failed_event: bool = True,
                   return_ok: bool = False, new_keyword: object = None) -> Any:
        NewerCeleryRequest.seen.append(new_keyword)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float, new_keyword: object = None) -> Any:
        NewerCeleryRequest.seen.append(new_keyword)
        return super().on_timeout(soft, timeout)


def test_request_callbacks_pass_celerys_arguments_through(
    instrumentor: CeleryMetricsInstrumentor,
) -> None:
    worker = Worker(request_class=f"{__name__}:NewerCeleryRequest")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor.instrument(meter_provider=provider, settings=Settings())
    handler = worker.start()
    NewerCeleryRequest.seen.clear()
    worker.run(handler, outcome="lost", return_ok=False, new_keyword="a")
    request = worker.run(handler, outcome="running")  # then a hard time limit
    request.on_timeout(soft=False, timeout=5.0, new_keyword="b")
    try:  # and the pool's error callback reports it too, as a real pool does
        raise TimeLimitExceeded(5.0)
    except TimeLimitExceeded:
        request.on_failure(ExceptionInfo(), new_keyword="c")
    assert NewerCeleryRequest.seen == ["a", "b", "c"]
    found = points(reader)
    assert state_total(found, "FAILURE") == 2  # the lost child and the time limit
    provider.shutdown()


def test_a_pool_child_whose_exporter_cannot_be_silenced_is_reported_to_the_main_process(
    instrumentor: CeleryMetricsInstrumentor,
) -> None:
    import math
    import os

    from opentelemetry.sdk.metrics.export import (
        ConsoleMetricExporter,
        PeriodicExportingMetricReader,
    )

    reader = InMemoryMetricReader()
    periodic = PeriodicExportingMetricReader(
        ConsoleMetricExporter(), export_interval_millis=math.inf
    )
    provider = MeterProvider(metric_readers=[reader, periodic])
    instrumentor.instrument(meter_provider=provider, settings=Settings())
    # An SDK whose periodic reader keeps its exporter elsewhere.
    exporter = periodic._exporter
    del periodic._exporter
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the pool child
            try:
                signals.worker_process_init.send(sender=None)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        found = points(reader)  # the collection reads what the child sent
    finally:
        periodic._exporter = exporter
    assert inactive(found)["pool_child_silencing"] == 1
    assert inactive(found)["collection"] == 0
    provider.shutdown()


def test_a_failure_while_installing_is_logged_once_and_leaves_nothing_installed(
    worker: Worker, instrumentor: CeleryMetricsInstrumentor, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """opentelemetry-instrument re-raises an instrumentor's exception and then loads no
    other instrumentor: ours logs one ERROR, undoes what it had installed, and returns."""
    from otel_celery_metrics.worker import beat as _beat

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("celery.beat changed")

    monkeypatch.setattr(_beat.BeatHooks, "install", broken)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    collect_before = reader._collect
    with caplog.at_level(logging.ERROR):
        instrumentor.instrument(meter_provider=provider, settings=Settings())
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert "could not install the Celery instrumentation (RuntimeError: celery.beat changed)" in (
        errors[0]
    )
    # Nothing of ours stays: the reader collects as the SDK does, requests are Celery's own.
    assert reader._collect == collect_before
    handler = worker.start()
    worker.run(handler)
    found = points(reader)
    assert mt.TASKS.name not in found or state_total(found, "SUCCESS") == 0
    provider.shutdown()
