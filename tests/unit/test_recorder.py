"""Recorder: metric table -> SDK points, with the caps and the attribute set applied."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.settings import Settings
from tests.unit.sdk_hook import hooked_recorder

TASKS = mt.METRIC_INDEX[mt.TASKS.name]
RUNTIME = mt.METRIC_INDEX[mt.TASK_RUNTIME.name]
EXECUTING = mt.METRIC_INDEX[mt.TASKS_EXECUTING.name]
OVERFLOW = mt.OVERFLOW_VALUE

Points = dict[frozenset[tuple[str, str]], object]


class Harness:
    def __init__(self, settings: Settings, **kwargs: object) -> None:
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader])
        # Failures count as dropped measurements of this recorder, as the instrumentor wires it.
        self.failures = FailureLog(on_failure=lambda n: self.recorder.emit(
            mt.METRIC_INDEX[mt.SELF_DROPPED.name], n, ("internal_error",)))
        self.recorder, adapter = hooked_recorder(self.provider, settings, self.failures, **kwargs)
        assert adapter.delta_readers == 0

    def points(self, spec: mt.MetricSpec) -> Points:
        """Attribute set -> value (counters) or point (histograms) of ``spec``."""
        data = self.reader.get_metrics_data()
        out: Points = {}
        for resource_metrics in data.resource_metrics if data else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name != spec.name:
                        continue
                    for point in metric.data.data_points:
                        key = frozenset((point.attributes or {}).items())
                        out[key] = getattr(point, "value", point)
        return out

    def nonzero(self, spec: mt.MetricSpec) -> Points:
        """Points of ``spec`` with a value other than 0 (self-metrics start at an explicit 0)."""
        return {k: v for k, v in self.points(spec).items() if v != 0}

    def overflow_count(self, attribute: str) -> object:
        return self.points(mt.SELF_OVERFLOW).get(frozenset({("attribute", attribute)}), 0)


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness(Settings())
    yield h
    h.provider.shutdown()


def attrs(**kv: str) -> frozenset[tuple[str, str]]:
    return frozenset(kv.items())


def test_a_measurement_becomes_a_point_with_the_table_attributes(harness: Harness) -> None:
    harness.recorder.emit(TASKS, 1, ("app.add", "celery", "SUCCESS"))
    harness.recorder.emit(TASKS, 1, ("app.add", "celery", "SUCCESS"))
    assert harness.points(mt.TASKS) == {
        attrs(task_name="app.add", queue="celery", state="SUCCESS"): 2
    }
    assert harness.nonzero(mt.SELF_OVERFLOW) == {}


def test_histograms_use_the_configured_buckets() -> None:
    h = Harness(Settings(runtime_buckets=(0.25, 4.0)))
    h.recorder.emit(RUNTIME, 1.0, ("app.add", "celery", "SUCCESS"))
    (point,) = h.points(mt.TASK_RUNTIME).values()
    assert tuple(point.explicit_bounds) == (0.25, 4.0)  # type: ignore[attr-defined]
    assert list(point.bucket_counts) == [0, 1, 0]  # type: ignore[attr-defined]


def test_task_names_past_the_cap_become_overflow_and_are_counted() -> None:
    h = Harness(Settings(max_task_names=2))
    for name in ("a", "b", "c", "d", "c", "a"):
        h.recorder.emit(TASKS, 1, (name, "q", "SUCCESS"))
    assert h.points(mt.TASKS) == {
        attrs(task_name="a", queue="q", state="SUCCESS"): 2,
        attrs(task_name="b", queue="q", state="SUCCESS"): 1,
        attrs(task_name=OVERFLOW, queue="q", state="SUCCESS"): 3,
    }
    # Every measurement that lost its task name counts, not every distinct name.
    assert h.overflow_count("task_name") == 3


def test_queues_past_the_cap_become_overflow_and_are_counted() -> None:
    h = Harness(Settings(max_queues=1))
    h.recorder.emit(TASKS, 1, ("t", "q1", "SUCCESS"))
    h.recorder.emit(TASKS, 1, ("t", "q2", "SUCCESS"))
    h.recorder.emit(RUNTIME, 0.1, ("t", "q3", "SUCCESS"))
    assert set(h.points(mt.TASKS)) == {
        attrs(task_name="t", queue="q1", state="SUCCESS"),
        attrs(task_name="t", queue=OVERFLOW, state="SUCCESS"),
    }
    # The queue budget is shared by all metrics of a worker.
    assert set(h.points(mt.TASK_RUNTIME)) == {
        attrs(task_name="t", queue=OVERFLOW, state="SUCCESS")
    }
    assert h.overflow_count("queue") == 2


def test_series_past_the_cap_fold_into_one_all_overflow_series() -> None:
    h = Harness(Settings(max_series_per_metric=3))
    states = ("SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED")
    for state in states:
        h.recorder.emit(TASKS, 1, ("t", "q", state))
    points = h.points(mt.TASKS)
    # Three real series, then everything else in one: the overflow series takes the
    # place of the third new one, so the total stays at the cap plus one at most.
    assert points == {
        attrs(task_name="t", queue="q", state="SUCCESS"): 1,
        attrs(task_name="t", queue="q", state="FAILURE"): 1,
        attrs(task_name="t", queue="q", state="RETRY"): 1,
        attrs(task_name=OVERFLOW, queue=OVERFLOW, state=OVERFLOW): 2,
    }
    assert h.overflow_count("series") == 2
    # Series already admitted keep recording normally.
    h.recorder.emit(TASKS, 1, ("t", "q", "SUCCESS"))
    assert h.points(mt.TASKS)[attrs(task_name="t", queue="q", state="SUCCESS")] == 2
    assert h.overflow_count("series") == 2


def test_the_default_series_cap_stays_below_the_sdk_limit() -> None:
    h = Harness(Settings(max_task_names=100_000))
    for i in range(2100):
        h.recorder.emit(TASKS, 1, (f"t{i}", "q", "SUCCESS"))
    points = h.points(mt.TASKS)
    cap = Settings().max_series_per_metric
    assert len(points) == cap + 1
    assert points[attrs(task_name=OVERFLOW, queue=OVERFLOW, state=OVERFLOW)] == 2100 - cap
    # The SDK's own silent fold never happened.
    assert not any(("otel.metric.overflow", True) in key for key in points)
    assert h.overflow_count("series") == 2100 - cap


def test_narrowed_attributes_are_dropped_from_every_measurement() -> None:
    h = Harness(Settings(attributes=frozenset({"task_name", "state"})))
    h.recorder.emit(TASKS, 1, ("t", "q1", "SUCCESS"))
    h.recorder.emit(TASKS, 1, ("t", "q2", "SUCCESS"))
    h.recorder.emit(RUNTIME, 0.5, ("t", "q1", "SUCCESS"))
    assert h.points(mt.TASKS) == {attrs(task_name="t", state="SUCCESS"): 2}
    assert set(h.points(mt.TASK_RUNTIME)) == {attrs(task_name="t", state="SUCCESS")}


def test_self_metrics_keep_their_attribute_when_users_narrow() -> None:
    h = Harness(Settings(attributes=frozenset({"state"}), max_task_names=1))
    h.recorder.emit(TASKS, 1, ("a", "q", "SUCCESS"))
    h.recorder.emit(TASKS, 1, ("b", "q", "SUCCESS"))
    # task_name is not recorded at all, so its cap never replaces anything.
    assert h.points(mt.TASKS) == {attrs(state="SUCCESS"): 2}
    assert h.nonzero(mt.SELF_OVERFLOW) == {}


def test_a_bad_measurement_never_raises_and_is_logged_once_and_counted(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="otel_celery_metrics"):
        harness.recorder.emit(TASKS, 1, ("only-one-value",))
        harness.recorder.emit(TASKS, 1, ("only-one-value",))
    assert harness.failures.count == 2
    assert len(caplog.records) == 1
    assert "celery.tasks takes 3 attribute values, got 1" in caplog.text
    assert harness.nonzero(mt.SELF_DROPPED) == {attrs(reason="internal_error"): 2}


def test_observable_metrics_read_their_callback_and_keep_reporting_zero() -> None:
    current: list[tuple[float, tuple[str, ...]]] = [(1.0, ("t", "q")), (1.0, ("t", "q"))]
    h = Harness(Settings(), observers={mt.TASKS_EXECUTING.name: lambda: list(current)})
    assert h.points(mt.TASKS_EXECUTING) == {attrs(task_name="t", queue="q"): 2}
    current.clear()
    # A gauge that drops to zero reads 0 rather than going stale.
    assert h.points(mt.TASKS_EXECUTING) == {attrs(task_name="t", queue="q"): 0}
    # Recording into an observable instrument directly is a harmless no-op.
    h.recorder.emit(EXECUTING, 5, ("t", "q"))
    assert h.failures.count == 0


def test_a_failing_observer_does_not_break_collection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> list[tuple[float, tuple[str, ...]]]:
        raise RuntimeError("celery state unavailable")

    h = Harness(Settings(), observers={mt.TASKS_EXECUTING.name: broken})
    h.recorder.emit(TASKS, 1, ("t", "q", "SUCCESS"))
    with caplog.at_level(logging.ERROR, logger="otel_celery_metrics"):
        assert h.points(mt.TASKS_EXECUTING) == {}
        assert h.points(mt.TASKS) == {attrs(task_name="t", queue="q", state="SUCCESS"): 1}
    # Two collections, two failures counted, one log line.
    assert h.failures.count == 2
    assert len(caplog.records) == 1


def test_delta_readers_get_only_what_happened_since_their_last_collection() -> None:
    from opentelemetry.sdk.metrics import Histogram
    from opentelemetry.sdk.metrics.export import AggregationTemporality

    delta = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
    cumulative = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[delta, cumulative])
    recorder, adapter = hooked_recorder(provider, Settings())
    assert adapter.delta_readers == 1

    def runtime(reader: InMemoryMetricReader) -> object:
        data = reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == mt.TASK_RUNTIME.name:
                        return metric.data
        return None

    recorder.task_ended("t", "q", "SUCCESS", 1.0)
    recorder.task_ended("t", "q", "SUCCESS", 3.0)
    first = runtime(delta)
    assert first.aggregation_temporality is AggregationTemporality.DELTA  # type: ignore[attr-defined]
    (point,) = first.data_points  # type: ignore[attr-defined]
    assert (point.count, point.sum, point.min, point.max) == (2, 4.0, 1.0, 3.0)
    recorder.task_ended("t", "q", "SUCCESS", 2.0)
    (point,) = runtime(delta).data_points  # type: ignore[attr-defined]
    assert (point.count, point.sum, point.min, point.max) == (1, 2.0, 2.0, 2.0)
    assert runtime(delta) is None  # nothing new: no point
    (point,) = runtime(cumulative).data_points  # type: ignore[attr-defined]
    assert (point.count, point.sum, point.min, point.max) == (3, 6.0, 1.0, 3.0)
    provider.shutdown()


def test_traced_runtime_points_carry_their_span_as_an_exemplar(harness: Harness) -> None:
    harness.recorder.task_ended("t", "q", "SUCCESS", 0.02, span=(0xABC, 0xDEF))
    harness.recorder.task_ended("t", "q", "SUCCESS", 0.03)
    (point,) = harness.points(mt.TASK_RUNTIME).values()
    (exemplar,) = point.exemplars  # type: ignore[attr-defined]
    assert (exemplar.trace_id, exemplar.span_id, exemplar.value) == (0xABC, 0xDEF, 0.02)
    # Handed out once, as the SDK's reservoirs do.
    (point,) = harness.points(mt.TASK_RUNTIME).values()
    assert list(point.exemplars) == []  # type: ignore[attr-defined]


def test_a_collection_that_cannot_get_the_lock_serves_the_rest_and_counts_the_miss(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every wait of a collection is bounded: a stuck holder of the aggregates' lock costs
    that collection our counters and histograms, not the whole scrape."""
    monkeypatch.setattr("otel_celery_metrics.recording.recorder._COLLECTION_LOCK_WAIT", 0.01)
    h = Harness(Settings(), observers={mt.TASKS_EXECUTING.name: lambda: [(2.0, ("t", "q"))]})
    h.recorder.task_ended("t", "q", "SUCCESS", 0.2)
    assert h.recorder._lock.acquire()  # a holder that never lets go (a copied lock)
    try:
        data = h.reader.get_metrics_data()  # one collection
    finally:
        h.recorder._lock.release()
    served = {m.name: [p.value for p in m.data.data_points]  # type: ignore[union-attr]
              for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
              if m.data.data_points}
    assert served == {mt.TASKS_EXECUTING.name: [2.0]}
    # Counters, and gauges without an observer (set through emit(), as the self-metrics
    # are; this harness observes none), read our aggregates.
    counters = sum(
        spec.kind is mt.InstrumentKind.COUNTER
        or spec.kind is mt.InstrumentKind.OBSERVABLE_GAUGE
        for spec in mt.METRICS
    )
    # Each of those callbacks and the histogram read gave up once.
    assert h.nonzero(mt.SELF_DROPPED) == {attrs(reason="collection_timeout"): counters + 1}
    assert h.points(mt.TASKS) == {attrs(task_name="t", queue="q", state="SUCCESS"): 1}
    assert len([r for r in caplog.records if "collection_timeout" in r.getMessage()]) == (
        counters + 1  # one line per place, not per collection
    )
    h.provider.shutdown()
