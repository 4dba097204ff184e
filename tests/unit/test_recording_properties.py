"""Property-based: any sequence of task messages and outcomes, hostile headers included,
gives a finite, valid exposition whose totals equal a small reference model.

Driven through the entry points Celery calls (its own ``strategy.create_request_cls`` with
our hooks installed, then the request callbacks a pool calls: ``on_accepted``,
``on_success``, ``on_failure``, ``on_timeout``), recorded into a real SDK with the
Prometheus reader, and scraped as text. The model below restates the counting rules
from the documentation (docs/configuration.md, Clocks and bad input), not from the code:
it computes, from the times the request really carries, which wait each task gets and
which values are refused.

Examples per run come from the Hypothesis profile (tests/conftest.py): bounded and
derandomized by default; ``HYPOTHESIS_PROFILE=long`` explores more.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.exceptions import Ignore, Reject, Retry, TimeLimitExceeded, WorkerLostError
from hypothesis import given
from hypothesis import strategies as st
from kombu import Message
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER
from otel_celery_metrics.core.routing import DELIVERED_FROM
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.settings import Settings
from otel_celery_metrics.worker.outcomes import RequestHooks, TaskOutcomes
from otel_celery_metrics.worker.signals import TaskReceivers
from tests.exporter.support import promtool_check
from tests.hostile import is_time
from tests.unit.sdk_hook import hooked_recorder

NAMES = ("p.a", "p.b", "p.c", "p.d", "p.e")
MAX_TASK_NAMES = 3
MAX_SERIES = 40
MAX_WAIT, MAX_RUNTIME, SKEW = 3600.0, 3600.0, 60.0
SETTINGS = Settings(
    max_task_names=MAX_TASK_NAMES, max_series_per_metric=MAX_SERIES, max_queue_wait=MAX_WAIT,
    max_runtime=MAX_RUNTIME, clock_skew_tolerance=SKEW,
)
OUTCOMES = ("success", "ValueError", "retry", "ignore", "reject", "lost", "time_limit")


class _Pool:
    apply_async = None


@pytest.fixture(scope="module")
def app() -> Celery:
    app = Celery("properties", broker="memory://", set_as_current=False)
    app.conf.task_ignore_result = True
    def work() -> None:
        return None

    for name in NAMES:
        app.task(name=name, shared=False)(work)
    app.finalize()
    return app


class Run:
    """One example's instrumentation: a fresh SDK, recorder and request classes."""

    def __init__(self, app: Celery) -> None:
        from celery.worker import strategy
        from celery.worker.request import Request

        self.app = app
        self.registry = CollectorRegistry()
        self.provider = MeterProvider(metric_readers=[PrometheusMetricReader(
            disable_target_info=True, registry=self.registry)])
        failures = FailureLog()
        self.recorder, _ = hooked_recorder(self.provider, SETTINGS, failures)
        self.outcomes = TaskOutcomes(self.recorder, failures, "dq", bounds=SETTINGS.bounds())
        self.hooks = RequestHooks(self.outcomes)
        self.hooks.install()
        self.receivers = TaskReceivers(
            self.recorder, failures, "dq", outcomes=self.outcomes  # type: ignore[arg-type]
        )
        self.receivers.connect()
        self.classes = {
            name: strategy.create_request_cls(Request, app.tasks[name], _Pool(), "h", None,
                                              app=app)
            for name in NAMES
        }
        self.count = 0

    def close(self) -> None:
        self.receivers.disconnect()
        self.hooks.uninstall()
        self.provider.shutdown()

    def request(self, name: str, headers: dict[str, Any]) -> Any:
        self.count += 1
        task_id = f"id-{self.count}"
        message = Message(
            body=b'[[], {}, {"callbacks": null, "errbacks": null, "chain": null, '
                 b'"chord": null}]',
            headers={"lang": "py", "task": name, "id": task_id, "root_id": task_id,
                     "retries": 0, "eta": None, "expires": None, **headers},
            content_type="application/json", content_encoding="utf-8",
            delivery_info={"routing_key": "q1", "exchange": "", DELIVERED_FROM: "q1"},
        )
        return self.classes[name](message, on_ack=lambda *_: None, app=self.app,
                                  task=self.app.tasks[name], hostname="h")

    def scrape(self) -> str:
        return generate_latest(self.registry).decode()


def einfo(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:  # noqa: BLE001
        return ExceptionInfo()


def run_outcome(request: Any, outcome: str, runtime: float) -> None:
    if outcome == "success":
        request.on_success((0, None, runtime))
    elif outcome == "lost":
        request.on_failure(einfo(WorkerLostError("lost")))
    elif outcome == "time_limit":  # Celery reports a hard time limit twice
        request.on_timeout(False, 5.0)
        request.on_failure(einfo(TimeLimitExceeded(5.0)))
    else:
        exc = {"ValueError": ValueError("x"), "retry": Retry("again"), "ignore": Ignore(),
               "reject": Reject("no", requeue=False)}[outcome]
        request.on_success((1, einfo(exc), None))


# -- the reference model -------------------------------------------------------------------

STATE = {"success": "SUCCESS", "ValueError": "FAILURE", "retry": "RETRY", "ignore": "IGNORED",
         "reject": "REJECTED", "lost": "FAILURE", "time_limit": "FAILURE"}
FAILURE_CLASS = {"ValueError": "ValueError", "reject": "Reject", "lost": "WorkerLostError",
                 "time_limit": "TimeLimitExceeded"}
# Outcomes whose runtime the model expects: Celery's own for a success, acceptance to result
# for what raised in the task; none for a lost child or a time limit.
TIMED = {"success", "ValueError", "retry", "ignore", "reject"}


@dataclass
class Model:
    tasks: Counter[tuple[str, str]]
    received: Counter[str]
    failures: Counter[tuple[str, str]]
    waits: Counter[tuple[str, str]]
    wait_sums: dict[tuple[str, str], float]
    runtimes: Counter[tuple[str, str]]
    dropped: Counter[str]


def expected_wait(request: Any, headers: dict[str, Any], model: Model) -> tuple[str, float] | None:
    started, fields = request.time_start, request.request_dict
    reference, wait_from = fields["otel_celery_received_at"], "received"
    if PUBLISHED_AT_HEADER in headers:
        published = headers[PUBLISHED_AT_HEADER]
        if is_time(published):
            reference, wait_from = float(published), "publish"
        else:
            model.dropped["invalid_time"] += 1
    eta = headers.get("eta")
    if eta is not None:
        eta_at = datetime.fromisoformat(eta).timestamp()
        if eta_at > reference:
            reference, wait_from = eta_at, "eta"
    wait = started - reference
    if not -SKEW <= wait <= MAX_WAIT:
        model.dropped["implausible_time"] += 1
        return None
    return wait_from, max(wait, 0.0)


# -- strategies ------------------------------------------------------------------------------

HOSTILE = st.sampled_from([
    -1e300, 1e300, float("-inf"), float("inf"), float("nan"), True, False, "1700000000", "",
    [1, 2], {"a": 1}, 10**400, -(10**400), 0, -1, None,
])
# Seconds before now (negative: the future), so that realistic headers occur often.
AGO = st.one_of(st.floats(-1e7, 1e7), st.sampled_from([0.0, 5.0, -30.0, -61.0, 3599.0, 3601.0]))
PUBLISHED = st.one_of(
    st.tuples(st.just("ago"), AGO), HOSTILE, st.floats(), st.integers(), st.text(max_size=4),
    st.just("absent"),
)
TASK = st.tuples(
    st.sampled_from(NAMES),
    PUBLISHED,
    st.one_of(st.none(), AGO),  # ETA, seconds before now
    st.sampled_from(OUTCOMES),
    st.floats(0.0, 100.0),  # Celery's runtime of a success
)


@given(tasks=st.lists(TASK, max_size=12))
def test_any_sequence_of_tasks_gives_finite_series_and_the_models_totals(
    app: Celery, tasks: list[tuple[str, Any, float | None, str, float]]
) -> None:
    run = Run(app)
    try:
        model = Model(Counter(), Counter(), Counter(), Counter(), {}, Counter(), Counter())
        admitted: list[str] = []
        for name, published, eta_ago, outcome, runtime in tasks:
            now = time.time()
            headers: dict[str, Any] = {}
            if isinstance(published, tuple):
                headers[PUBLISHED_AT_HEADER] = now - published[1]
            elif published != "absent":
                headers[PUBLISHED_AT_HEADER] = published
            if eta_ago is not None:
                headers["eta"] = datetime.fromtimestamp(now - eta_ago, UTC).isoformat()
            if headers.get(PUBLISHED_AT_HEADER, 0) is None:
                del headers[PUBLISHED_AT_HEADER]  # a None header is an absent one
            request = run.request(name, headers)
            # The name cap: the first MAX_TASK_NAMES distinct names, in order of receipt.
            if name not in admitted and len(admitted) < MAX_TASK_NAMES:
                admitted.append(name)
            label = name if name in admitted else "__overflow__"
            model.received[label] += 1
            request.on_accepted(4242, time.monotonic() - 1.0)
            wait = expected_wait(request, headers, model)
            run_outcome(request, outcome, runtime)
            state = STATE[outcome]
            model.tasks[(label, state)] += 1
            if outcome in FAILURE_CLASS:
                model.failures[(label, FAILURE_CLASS[outcome])] += 1
            if outcome in TIMED:
                model.runtimes[(label, state)] += 1
            if wait is not None:
                model.waits[(label, wait[0])] += 1
                key = (label, wait[0])
                model.wait_sums[key] = model.wait_sums.get(key, 0.0) + wait[1]
        text = run.scrape()
    finally:
        run.close()
    check_exposition(text, model)


def check_exposition(text: str, model: Model) -> None:
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = [s for f in families.values() for s in f.samples]
    assert all(math.isfinite(s.value) for s in samples), [s for s in samples
                                                           if not math.isfinite(s.value)]

    def values(sample_name: str, *keys: str) -> Counter[tuple[str, ...]]:
        out: Counter[tuple[str, ...]] = Counter()
        for s in samples:
            if s.name == sample_name and s.value:
                out[tuple(s.labels[k] for k in keys)] += s.value
        return out

    assert values("celery_tasks_total", "task_name", "state") == model.tasks
    assert values("celery_tasks_received_total", "task_name") == {
        (k,): v for k, v in model.received.items()}
    assert values("celery_task_failures_total", "task_name", "exception_type") == model.failures
    assert values("celery_task_runtime_seconds_count", "task_name", "state") == model.runtimes
    assert values("celery_task_queue_wait_seconds_count", "task_name", "wait_from") == model.waits
    sums = values("celery_task_queue_wait_seconds_sum", "task_name", "wait_from")
    for key, expected in model.wait_sums.items():
        assert sums.get(key, 0.0) == pytest.approx(expected, rel=1e-9, abs=1e-6)
    dropped = {k[0]: v for k, v in values("otel_celery_metrics_dropped_total", "reason").items()}
    assert dropped == dict(model.dropped)  # no internal_error: nothing raised
    # Caps: task names (plus the overflow value) and series per metric.
    for family in families.values():
        names = {s.labels["task_name"] for s in family.samples if "task_name" in s.labels}
        assert len(names - {"__overflow__"}) <= MAX_TASK_NAMES
        series = {tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("le",)))
                  for s in family.samples}
        assert len(series) <= MAX_SERIES
    promtool_check(text)
