"""Relayed spans encoded in the child arrive through the user's own OTLP exporter, exact.

Real parts: an SDK TracerProvider with a BatchSpanProcessor around the real OTLP span
exporter (http/protobuf to an HTTP receiver, gRPC to a gRPC server), both on 127.0.0.1.
What arrives is compared with what the child's own exporter would have sent: the
official encoder's bytes for every span, under the main process' resource.
"""

from __future__ import annotations

import marshal
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc import trace_exporter as grpc_trace_exporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http import trace_exporter as http_trace_exporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.codec import SPAN_OTLP_ENTRY
from otel_celery_metrics.pool.relay import PoolRelay
from otel_celery_metrics.sdk_adapter.span_export import EncodedSpanRoute, child_span_encoder
from tests.otlp_receiver import OtlpHttpReceiver
from tests.support import wait_for

MAIN = Resource.create({"service.name": "worker", "service.instance.id": "main-1"})
CHILD = Resource.create({"service.name": "worker", "process.pid": 4242})


def _child_spans() -> list[Any]:
    """Ended spans as a pool child makes them: two scopes, every field the encoder writes."""
    kept: list[Any] = []

    class Keep(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            kept.extend(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider(resource=CHILD, span_limits=SpanLimits(max_span_attributes=5))
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    celery = provider.get_tracer("opentelemetry.instrumentation.celery", "0.66b2")
    app = provider.get_tracer("billing", schema_url="https://opentelemetry.io/schemas/1.21.0")
    remote = SpanContext(0xABC, 0xDEF, True, TraceFlags(TraceFlags.SAMPLED),
                         TraceState([("vendor", "v1")]))
    from opentelemetry.trace import NonRecordingSpan, set_span_in_context

    parent = set_span_in_context(NonRecordingSpan(remote))
    with celery.start_as_current_span("run/billing.charge", context=parent,
                                      kind=SpanKind.CONSUMER,
                                      links=[Link(remote, {"link.kind": "publish"})]) as run:
        run.set_attributes({"celery.task_name": "billing.charge", "retries": 2,
                            "ratio": 0.5, "eager": False, "queues": ["a", "b"],
                            "dropped.1": 1, "dropped.2": 2})
        run.add_event("charged", {"amount": 12.5})
        with app.start_as_current_span("charge") as inner:
            inner.set_status(Status(StatusCode.ERROR, "card declined"))
    return kept


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Export(self, request: Any, context: Any) -> Any:  # gRPC names it
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def http_receiver() -> Any:
    receiver = OtlpHttpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture
def grpc_receiver() -> Any:
    service = _TraceService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, service
    server.stop(0)


def _main_relay(exporter: Any, *, batch: bool = True) -> tuple[PoolRelay, TracerProvider]:
    provider = TracerProvider(resource=MAIN)
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    relay = PoolRelay(MeterProvider(), FailureLog(), count=lambda *_: None,
                      skip_scopes=frozenset(), tracer_provider=lambda: provider)
    relay.before_first_fork()
    return relay, provider


def _relay_from_child(spans: list[Any]) -> list[tuple[Any, ...]]:
    """The child's side: each ended span encoded as its relay does; one datagram."""
    encode = child_span_encoder()
    assert encode is not None
    entries = [(SPAN_OTLP_ENTRY, *encode(span)) for span in spans]
    decoded: list[tuple[Any, ...]] = marshal.loads(marshal.dumps((0, entries), 4))[1]  # noqa: S302
    return decoded


def _expected(spans: list[Any]) -> dict[bytes, Any]:
    request = encode_spans(spans)
    return {s.span_id: (ss.scope, ss.schema_url, s) for rs in request.resource_spans
            for ss in rs.scope_spans for s in ss.spans}


def _arrived(requests: list[Any]) -> dict[bytes, Any]:
    out = {}
    for request in requests:
        for rs in request.resource_spans:
            assert rs.resource.attributes == encode_spans(
                [_probe()]).resource_spans[0].resource.attributes  # the main's resource
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out[s.span_id] = (ss.scope, ss.schema_url, s)
    return out


def _probe() -> Any:
    from opentelemetry.sdk.trace import ReadableSpan

    return ReadableSpan(name="probe", context=SpanContext(1, 1, False), resource=MAIN)


def test_spans_encoded_in_the_child_reach_the_users_http_exporter_as_it_would_send_them(
    http_receiver: OtlpHttpReceiver,
) -> None:
    spans = _child_spans()
    exporter = http_trace_exporter.OTLPSpanExporter(
        endpoint=f"{http_receiver.endpoint}/v1/traces", compression=Compression.Gzip)
    relay, provider = _main_relay(exporter)
    assert relay._span_route is not None  # children send OTLP bytes
    entries = _relay_from_child(spans)
    relay.receive(entries)
    assert provider.force_flush()
    arrived = _arrived(http_receiver.received.trace_requests)
    assert arrived == _expected(spans)
    dropped = [s for _, _, s in arrived.values() if s.dropped_attributes_count]
    assert [s.dropped_attributes_count for s in dropped] == [2]  # carried now
    relay.detach()
    provider.shutdown()


def test_spans_encoded_in_the_child_reach_the_users_grpc_exporter_with_its_own_spans(
    grpc_receiver: tuple[int, _TraceService],
) -> None:
    port, service = grpc_receiver
    spans = _child_spans()
    exporter = grpc_trace_exporter.OTLPSpanExporter(endpoint=f"127.0.0.1:{port}",
                                                     insecure=True)
    relay, provider = _main_relay(exporter, batch=False)
    entries = _relay_from_child(spans)
    relay.receive(entries)
    # A span of the main process itself goes through the same exporter, encoded as ever.
    with provider.get_tracer("main").start_as_current_span("apply_async/billing.charge"):
        pass
    wait_for(lambda: len(service.requests) >= len(spans) + 1, timeout=10,
             what="every span at the gRPC receiver")
    arrived = _arrived(service.requests)
    own = [s for _, _, s in arrived.values() if s.name == "apply_async/billing.charge"]
    assert len(own) == 1
    del arrived[own[0].span_id]
    assert arrived == _expected(spans)
    relay.detach()
    provider.shutdown()


def test_other_processors_get_rebuilt_spans_and_undo_puts_the_exporters_back(
    http_receiver: OtlpHttpReceiver,
) -> None:
    original = http_trace_exporter.encode_spans
    console = TracerProvider(resource=MAIN)
    console.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=_Sink())))
    relay = PoolRelay(MeterProvider(), FailureLog(), count=lambda *_: None,
                      skip_scopes=frozenset(), tracer_provider=lambda: console)
    relay.before_first_fork()
    assert http_trace_exporter.encode_spans is original  # nothing to route: untouched
    assert relay._span_route is None  # children send plain tuples, rebuilt here
    console.shutdown()

    exporter = http_trace_exporter.OTLPSpanExporter(endpoint=f"{http_receiver.endpoint}/v1/traces")
    relay, provider = _main_relay(exporter)
    assert http_trace_exporter.encode_spans is not original
    relay.detach()
    assert http_trace_exporter.encode_spans is original
    assert grpc_trace_exporter.encode_spans is encode_spans
    provider.shutdown()


def test_a_subclassed_exporter_is_not_routed() -> None:
    class Mine(http_trace_exporter.OTLPSpanExporter):
        pass

    provider = TracerProvider(resource=MAIN)
    processor = BatchSpanProcessor(Mine(endpoint="http://127.0.0.1:9/v1/traces"))
    route = EncodedSpanRoute.for_provider(provider, [processor], processor.on_end)
    assert route is None
    provider.add_span_processor(processor)
    provider.shutdown()


class _Sink:
    def write(self, _text: str) -> None:
        return None

    def flush(self) -> None:
        return None
