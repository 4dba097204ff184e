"""SdkAdapter: every change to a provider's readers is undone, even under a later hook."""

from __future__ import annotations

import contextlib
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.recording.settings import Settings
from otel_celery_metrics.sdk_adapter import SdkAdapter
from tests.unit.sdk_hook import hooked_recorder


def names(reader: InMemoryMetricReader) -> list[str]:
    data = reader.get_metrics_data()
    return [
        m.name for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics for m in sm.metrics
    ]


def test_undo_under_a_later_hook_leaves_that_hook_and_adds_nothing_of_ours() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    recorder, adapter = hooked_recorder(provider, Settings())
    recorder.task_ended("t", "q", "SUCCESS", 0.5)
    assert mt.TASK_RUNTIME.name in names(reader)
    # Someone hooks the reader after us (another library, a second adapter).
    ours = reader._collect
    theirs_called: list[int] = []

    def theirs(*args: Any, **kwargs: Any) -> Any:
        theirs_called.append(1)
        return ours(*args, **kwargs)

    reader._collect = theirs
    adapter.undo()
    assert reader._collect is theirs  # not clobbered
    assert mt.TASK_RUNTIME.name not in names(reader)  # ours passes through now
    assert theirs_called
    provider.shutdown()


def test_undo_restores_the_prometheus_readers_scope_labels() -> None:
    reader = PrometheusMetricReader(registry=CollectorRegistry())
    provider = MeterProvider(metric_readers=[reader])
    before = reader._collector._scope_info_enabled
    adapter = SdkAdapter(provider, "t", "0")
    adapter.apply(lambda _reset: [], lambda: None, contextlib.nullcontext, scope_labels=not before)
    assert reader._collector._scope_info_enabled is (not before)
    adapter.undo()
    assert reader._collector._scope_info_enabled is before
    provider.shutdown()


def test_a_provider_that_is_not_the_sdks_is_left_alone() -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    adapter = SdkAdapter(NoOpMeterProvider(), "t", "0")
    assert not adapter.is_sdk and not adapter.hookable
    assert adapter.collection_problem() is None  # histograms go through the API: not a fault
    assert adapter.silence_pool_child() is None
