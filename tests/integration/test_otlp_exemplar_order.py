"""Exemplars do not depend on the order receivers were connected in.

Celery calls a signal's receivers in connection order, and which of our instrumentor and
opentelemetry-instrumentation-celery connects first depends on entry-point discovery. Ours
look the span up at task_prerun and again at task_postrun, so one of the two sees the task
span open either way. Checked here in one process with the real instrumentations and
Celery's real signal dispatch (``task.apply()`` runs the traced task), then the task's
outcome recorded from a real worker request with that task id, each order in turn; the
worker-process version of the same claim is in test_otlp_pipeline.py (whatever order
``opentelemetry-instrument`` produces there).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from opentelemetry.instrumentation.celery import CeleryInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_celery_metrics import CeleryMetricsInstrumentor, Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def app() -> Celery:
    app = Celery("exemplar_order", broker="memory://")

    @app.task(name="order.work", shared=False)
    def work(x: int) -> int:
        return x * 2

    return app


@pytest.fixture
def providers() -> Iterator[tuple[TracerProvider, InMemorySpanExporter, MeterProvider,
                                  InMemoryMetricReader]]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield tracer_provider, spans, meter_provider, reader
    CeleryInstrumentor().uninstrument()
    CeleryMetricsInstrumentor().uninstrument()
    meter_provider.shutdown()
    tracer_provider.shutdown()


def _runtime_exemplars(reader: InMemoryMetricReader) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        exemplar
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "celery.task.runtime"
        for point in metric.data.data_points
        for exemplar in point.exemplars
    ]


class _Pool:
    apply_async = None


def _finish_in_worker(app: Celery, task: Any, task_id: str) -> None:
    """What the worker's main process does with the pool's result for ``task_id``."""
    import time

    from celery.worker import strategy
    from celery.worker.request import Request
    from kombu import Message

    request_cls = strategy.create_request_cls(Request, task, _Pool(), "host", None, app=app)
    message = Message(
        body=b'[[21], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]',
        headers={"lang": "py", "task": task.name, "id": task_id, "root_id": task_id},
        content_type="application/json", content_encoding="utf-8",
        delivery_info={"routing_key": "celery"},
    )
    request = request_cls(message, on_ack=lambda *_: None, app=app, task=task, hostname="host")
    request.on_accepted(1, time.monotonic())
    request.on_success((0, 42, 0.001))


@pytest.mark.parametrize("first", ["ours", "tracing"])
def test_runtime_exemplar_names_the_task_span_whichever_receivers_run_first(
    app: Celery, providers: tuple[Any, ...], first: str
) -> None:
    tracer_provider, spans, meter_provider, reader = providers
    ours = lambda: CeleryMetricsInstrumentor().instrument(  # noqa: E731
        meter_provider=meter_provider, settings=Settings()
    )
    tracing = lambda: CeleryInstrumentor().instrument(  # noqa: E731
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    for connect in (ours, tracing) if first == "ours" else (tracing, ours):
        connect()
    from celery import signals

    # What a worker sends once every instrumentor has run: exemplars switch on here.
    signals.worker_init.send(sender=None)

    task = app.tasks["order.work"]
    task.apply(args=(21,), task_id="order-1")
    _finish_in_worker(app, task, "order-1")

    (span,) = [s for s in spans.get_finished_spans() if s.name == "run/order.work"]
    exemplars = _runtime_exemplars(reader)
    assert len(exemplars) == 1
    assert exemplars[0].trace_id == span.context.trace_id
    assert exemplars[0].span_id == span.context.span_id
