"""The relay's merge: children's delta points -> one cumulative series per attribute set.

Driven with real SDK objects: a child-side MeterProvider with the relay's delta reader,
its collections encoded and decoded as the wire carries them, merged in a store, and
handed to a main-process MeterProvider's readers (cumulative and delta).
"""

from __future__ import annotations

import contextlib
import logging
import marshal
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_celery_metrics.pool.codec import decode_span, encode_metrics, encode_span
from otel_celery_metrics.pool.relay_store import ReaderView, RelayStore, merge_into
from otel_celery_metrics.sdk_adapter import SdkAdapter, pool_relay


class _Child:
    """A pool child's SDK with only the relay's reader; ``send()`` returns the wire points."""

    def __init__(self) -> None:
        self.collected: list[Any] = []
        self.reader = pool_relay.relay_reader(self.collected.append)
        self.provider = MeterProvider(metric_readers=[self.reader])
        meter = self.provider.get_meter("billing")
        self.invoices = meter.create_counter("billing.invoices")
        self.amount = meter.create_histogram(
            "billing.amount", explicit_bucket_boundaries_advisory=[10.0, 100.0]
        )

    def send(self) -> list[Any]:
        self.collected.clear()
        self.reader.collect()
        points: list[Any] = []
        for data in self.collected:
            encoded, unsupported = encode_metrics(data, frozenset({"otel_celery_metrics"}))
            assert not unsupported
            points.extend(marshal.loads(marshal.dumps(encoded)))  # noqa: S302 - our own bytes
        return points


def _values(data: Any) -> dict[tuple[str, frozenset[Any]], Any]:
    out: dict[tuple[str, frozenset[Any]], Any] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    key = (m.name, frozenset(p.attributes.items()))
                    out[key] = (
                        (p.count, tuple(p.bucket_counts), p.sum) if hasattr(p, "count")
                        else p.value
                    )
    return out


def test_deltas_of_several_children_merge_into_one_cumulative_series_per_attribute_set() -> None:
    store = RelayStore()
    first, second = _Child(), _Child()
    first.invoices.add(2, {"plan": "pro"})
    first.amount.record(5.0, {"plan": "pro"})
    second.invoices.add(3, {"plan": "pro"})
    second.amount.record(50.0, {"plan": "pro"})
    store.add(first.send())
    store.add(second.send())
    assert first.send() == [], "a child that recorded nothing since its last send sends nothing"
    first.invoices.add(1, {"plan": "free"})
    store.add(first.send())

    view = ReaderView(frozenset())
    merged = merge_into(None, store.metrics(view), resource=None)
    values = _values(merged)
    assert values[("billing.invoices", frozenset({("plan", "pro")}))] == 5
    assert values[("billing.invoices", frozenset({("plan", "free")}))] == 1
    assert values[("billing.amount", frozenset({("plan", "pro")}))] == (2, (1, 1, 0), 55.0)


def test_a_delta_reader_gets_only_what_changed_since_its_own_last_collection() -> None:
    store = RelayStore()
    child = _Child()
    child.invoices.add(2, {"plan": "pro"})
    store.add(child.send())
    view = ReaderView(frozenset({"counter", "histogram"}))
    assert _values(merge_into(None, store.metrics(view), None)) == {
        ("billing.invoices", frozenset({("plan", "pro")})): 2
    }
    assert store.metrics(view) == {}, "nothing changed: no points"
    child.invoices.add(3, {"plan": "pro"})
    store.add(child.send())
    assert _values(merge_into(None, store.metrics(view), None)) == {
        ("billing.invoices", frozenset({("plan", "pro")})): 3
    }


def test_relayed_series_join_the_main_process_own_series_of_the_same_metric() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("billing").create_counter("billing.invoices").add(10, {"plan": "pro"})
    store = RelayStore()
    child = _Child()
    child.invoices.add(5, {"plan": "pro"})
    child.invoices.add(1, {"plan": "free"})
    store.add(child.send())
    produced: list[Any] = []

    def produce(_reader: Any, data: Any, kinds: frozenset[str]) -> Any:
        produced.append(kinds)
        return merge_into(data, store.metrics(ReaderView(kinds)), None)

    adapter = _applied_adapter(provider)
    assert adapter.add_relayed(produce) == 1
    values = _values(reader.get_metrics_data())
    assert values[("billing.invoices", frozenset({("plan", "pro")}))] == 15
    assert values[("billing.invoices", frozenset({("plan", "free")}))] == 1
    assert produced == [frozenset()]


def test_series_past_the_cap_fold_into_one_overflow_series_and_are_counted() -> None:
    overflowed: list[int] = []
    store = RelayStore(max_series=2, on_overflow=overflowed.append)
    child = _Child()
    for plan in ("a", "b", "c", "d"):
        child.invoices.add(1, {"plan": plan})
    store.add(child.send())
    values = _values(merge_into(None, store.metrics(ReaderView(frozenset())), None))
    assert values[("billing.invoices", frozenset({("otel.metric.overflow", True)}))] == 2
    assert sum(values.values()) == 4
    assert overflowed == [2]


def test_a_relayed_span_is_exported_under_the_main_process_resource() -> None:
    exporter = InMemorySpanExporter()
    child_provider = TracerProvider()
    child_provider.add_span_processor(SimpleSpanProcessor(exporter))
    with child_provider.get_tracer("tests").start_as_current_span(
        "run/tests.invoice", attributes={"celery.task_name": "tests.invoice", "n": (1, 2)}
    ) as span:
        span.add_event("retry", {"attempt": 1})
    (ended,) = exporter.get_finished_spans()
    wire = marshal.loads(marshal.dumps(encode_span(ended)))  # noqa: S302 - our own bytes
    main = TracerProvider()
    rebuilt = decode_span(wire, main.resource)
    assert rebuilt.resource is main.resource
    assert (rebuilt.name, rebuilt.context, rebuilt.parent) == (ended.name, ended.context, None)
    assert dict(rebuilt.attributes) == {"celery.task_name": "tests.invoice", "n": (1, 2)}
    assert [(e.name, dict(e.attributes)) for e in rebuilt.events] == [("retry", {"attempt": 1})]
    assert (rebuilt.start_time, rebuilt.end_time) == (ended.start_time, ended.end_time)
    assert rebuilt.instrumentation_scope.name == "tests"


def test_delta_temporality_is_what_the_child_reader_asks_for() -> None:
    reader = pool_relay.relay_reader(lambda _data: None)
    assert set(reader._instrument_class_temporality.values()) == {AggregationTemporality.DELTA}


def test_after_detach_readers_get_only_their_own_data_again() -> None:
    from otel_celery_metrics.core.safety import FailureLog
    from otel_celery_metrics.pool.codec import POINT_ENTRY as POINT
    from otel_celery_metrics.pool.relay import PoolRelay

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    counts: list[tuple[str, int]] = []
    relay = PoolRelay(provider, FailureLog(), count=lambda s, n: counts.append((s, n)),
                      skip_scopes=frozenset())
    assert relay.attach(_applied_adapter(provider)) == 1
    child = _Child()
    child.invoices.add(4, {"plan": "pro"})
    relay.receive([(POINT, p) for p in child.send()])
    assert counts == [("metrics", 1)]
    assert _values(reader.get_metrics_data()) == {
        ("billing.invoices", frozenset({("plan", "pro")})): 4
    }
    relay.detach()
    assert reader.get_metrics_data() is None


def test_the_relay_merges_into_the_store_it_is_given_even_while_that_store_is_empty() -> None:
    from otel_celery_metrics.core.safety import FailureLog
    from otel_celery_metrics.pool.codec import POINT_ENTRY as POINT
    from otel_celery_metrics.pool.relay import PoolRelay

    overflowed: list[int] = []
    store = RelayStore(max_series=1, on_overflow=overflowed.append)
    relay = PoolRelay(MeterProvider(), FailureLog(), count=lambda _s, _n: None,
                      skip_scopes=frozenset(), store=store)
    child = _Child()
    child.invoices.add(1, {"plan": "a"})
    child.invoices.add(1, {"plan": "b"})
    relay.receive([(POINT, p) for p in child.send()])
    assert relay.store is store
    assert overflowed == [1]


def test_observable_instruments_of_a_child_are_merged_as_documented() -> None:
    from opentelemetry.metrics import CallbackOptions, Observation

    store = RelayStore()
    children = [_Child(), _Child()]
    readings = {"counter": [5, 7], "gauge": [1.5, 2.5]}

    for i, child in enumerate(children):
        meter = child.provider.get_meter("billing")

        def counter_cb(_o: CallbackOptions, i: int = i) -> list[Observation]:
            return [Observation(readings["counter"][i], {"plan": "pro"})]

        def gauge_cb(_o: CallbackOptions, i: int = i) -> list[Observation]:
            return [Observation(readings["gauge"][i], {"plan": "pro"})]

        meter.create_observable_counter("billing.exported", callbacks=[counter_cb])
        meter.create_observable_gauge("billing.queue", callbacks=[gauge_cb])
    store.add(children[0].send())
    store.add(children[1].send())
    readings["counter"][0] = 8  # the first child's counter grew by 3
    store.add(children[0].send())
    values = _values(merge_into(None, store.metrics(ReaderView(frozenset())), None))
    pro = frozenset({("plan", "pro")})
    # Observable counter: the sum of every child's value.
    assert values[("billing.exported", pro)] == 8 + 7
    # Observable gauge: the latest value any child reported.
    assert values[("billing.queue", pro)] == 1.5


def test_without_add_metric_reader_the_child_swap_still_gives_one_aggregation() -> None:
    """Older SDKs have no MeterProvider.add_metric_reader: the private path does the same."""
    inherited = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[inherited])
    counter = provider.get_meter("billing").create_counter("billing.invoices")
    counter.add(100, {"plan": "pro"})  # before the fork: the main process' value
    collected: list[Any] = []
    relay_reader = pool_relay.relay_reader(collected.append)
    assert pool_relay.swap_child_readers_without_public_api(provider, relay_reader)
    counter.add(2, {"plan": "pro"})
    relay_reader.collect()
    (data,) = collected
    assert _values(data) == {("billing.invoices", frozenset({("plan", "pro")})): 2}
    assert inherited.get_metrics_data() is None, "the inherited reader keeps nothing"


def _applied_adapter(provider: Any) -> SdkAdapter:
    """The adapter hooked into ``provider``'s readers, as the instrumentor applies it."""
    adapter = SdkAdapter(provider, "t", "0")
    adapter.apply(lambda _reset: [], lambda: None, contextlib.nullcontext, scope_labels=False)
    return adapter


def test_a_non_sdk_meter_provider_is_reported_when_a_worker_forks_its_pool_not_before(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A producer instrumenting with the API's default provider has no pool to relay from:
    nothing to say. A worker about to fork children that record where we cannot reach: say so."""
    from opentelemetry.metrics import NoOpMeterProvider

    from otel_celery_metrics.core.safety import FailureLog
    from otel_celery_metrics.pool.relay import PoolRelay

    provider = NoOpMeterProvider()
    failures = FailureLog()
    relay = PoolRelay(provider, failures, count=lambda _s, _n: None, skip_scopes=frozenset())
    adapter = SdkAdapter(provider, "t", "0")
    with caplog.at_level(logging.ERROR):
        assert relay.attach(adapter) == 0
        assert caplog.records == []
        relay.before_first_fork()
    assert [r.getMessage() for r in caplog.records if "not the OpenTelemetry SDK's" in
            r.getMessage()], caplog.text
    assert failures.count == 1
