"""A real OTLP receiver for tests: OTLP/HTTP (protobuf) and OTLP/gRPC, metrics and traces.

It stands in for the OpenTelemetry Collector's ``otlp`` receiver. Workers under test export
to it exactly as they would to a Collector sidecar; the tests read what arrived through
:class:`Received`, decoded with ``opentelemetry-proto`` into small plain records
(:class:`Point`, :class:`SpanRecord`) so assertions read like what a user would query.

Behaviour switches for failure tests, applied to every later request:
- :meth:`OtlpHttpReceiver.stop` / :meth:`~OtlpHttpReceiver.start`: the Collector is down
  (connection refused) and comes back on the same port;
- ``delay``: the Collector is slow: every request waits that many seconds and, if the
  receiver is still slow then, is dropped unanswered (the exporter has timed out).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

Attrs = frozenset[tuple[str, Any]]


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return attrs_of(value.kvlist_value.values)
    return getattr(value, kind)


def attrs_of(kvs: Any) -> Attrs:
    return frozenset((kv.key, any_value(kv.value)) for kv in kvs)


@dataclass(frozen=True)
class Exemplar:
    trace_id: str  # 32 hex digits, as span records spell it
    span_id: str
    value: float


@dataclass(frozen=True)
class Point:
    """One data point of one metric, with the resource it was exported under."""

    request: int  # index of the export request it came in (arrival order)
    metric: str
    resource: Attrs
    attrs: Attrs
    kind: str  # "sum", "histogram", "gauge"
    value: float  # sum/gauge value; histogram: count
    start_time: int
    time: int
    temporality: int  # AggregationTemporality enum value; 0 for gauges
    exemplars: tuple[Exemplar, ...] = ()
    bucket_counts: tuple[int, ...] = ()

    def attr(self, key: str) -> Any:
        return dict(self.attrs).get(key)

    def resource_attr(self, key: str) -> Any:
        return dict(self.resource).get(key)


@dataclass(frozen=True)
class SpanRecord:
    name: str
    trace_id: str
    span_id: str
    resource: Attrs
    attrs: Attrs
    scope: str

    def resource_attr(self, key: str) -> Any:
        return dict(self.resource).get(key)


def _exemplars(raw: Any) -> tuple[Exemplar, ...]:
    out = []
    for e in raw:
        value = e.as_double if e.WhichOneof("value") == "as_double" else float(e.as_int)
        out.append(Exemplar(e.trace_id.hex(), e.span_id.hex(), value))
    return tuple(out)


def metric_points(request: ExportMetricsServiceRequest, index: int) -> Iterator[Point]:
    for rm in request.resource_metrics:
        resource = attrs_of(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                data = m.WhichOneof("data")
                if data == "sum":
                    for p in m.sum.data_points:
                        v = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                        yield Point(index, m.name, resource, attrs_of(p.attributes), "sum",
                                    float(v), p.start_time_unix_nano, p.time_unix_nano,
                                    m.sum.aggregation_temporality, _exemplars(p.exemplars))
                elif data == "histogram":
                    for p in m.histogram.data_points:
                        yield Point(index, m.name, resource, attrs_of(p.attributes), "histogram",
                                    float(p.count), p.start_time_unix_nano, p.time_unix_nano,
                                    m.histogram.aggregation_temporality,
                                    _exemplars(p.exemplars), tuple(p.bucket_counts))
                elif data == "gauge":
                    for p in m.gauge.data_points:
                        v = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                        yield Point(index, m.name, resource, attrs_of(p.attributes), "gauge",
                                    float(v), p.start_time_unix_nano, p.time_unix_nano, 0,
                                    _exemplars(p.exemplars))


def span_records(request: ExportTraceServiceRequest) -> Iterator[SpanRecord]:
    for rs in request.resource_spans:
        resource = attrs_of(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                yield SpanRecord(s.name, s.trace_id.hex(), s.span_id.hex(), resource,
                                 attrs_of(s.attributes), ss.scope.name)


@dataclass
class Received:
    """Everything a receiver has accepted, in arrival order. Thread-safe."""

    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    trace_requests: list[ExportTraceServiceRequest] = field(default_factory=list)
    #: Arrival time (monotonic) of each metrics request, same order as metric_requests.
    metric_arrivals: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add_metrics(self, request: ExportMetricsServiceRequest) -> None:
        with self._lock:
            self.metric_requests.append(request)
            self.metric_arrivals.append(time.monotonic())

    def add_traces(self, request: ExportTraceServiceRequest) -> None:
        with self._lock:
            self.trace_requests.append(request)

    def points(self, metric: str | None = None) -> list[Point]:
        with self._lock:
            requests = list(self.metric_requests)
        return [
            p for i, r in enumerate(requests) for p in metric_points(r, i)
            if metric is None or p.metric == metric
        ]

    def spans(self) -> list[SpanRecord]:
        with self._lock:
            requests = list(self.trace_requests)
        return [s for r in requests for s in span_records(r)]

    def metric_request_count(self) -> int:
        with self._lock:
            return len(self.metric_requests)

    def trace_request_count(self) -> int:
        with self._lock:
            return len(self.trace_requests)

    def latest(self, metric: str, **attrs: str) -> dict[tuple[Attrs, Attrs], Point]:
        """The last point of every cumulative series of ``metric`` (per resource and
        attributes) whose attributes include ``attrs``: what a Collector's Prometheus
        exporter would show now."""
        want = set(attrs.items())
        out: dict[tuple[Attrs, Attrs], Point] = {}
        for p in self.points(metric):
            if want <= set(p.attrs):
                out[(p.resource, p.attrs)] = p
        return out

    def total(self, metric: str, **attrs: str) -> float:
        """Sum over series of the latest cumulative value (histograms: count)."""
        return sum(p.value for p in self.latest(metric, **attrs).values())

    def resource_values(self, key: str) -> set[Any]:
        return {p.resource_attr(key) for p in self.points()}


def _decode_body(body: bytes, encoding: str | None) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class OtlpHttpReceiver:
    """OTLP/HTTP (binary protobuf) on ``127.0.0.1:port``: ``/v1/metrics``, ``/v1/traces``."""

    def __init__(self, port: int = 0, received: Received | None = None) -> None:
        self.received = received or Received()
        self.delay = 0.0
        self.port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpHttpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = _decode_body(self.rfile.read(length), self.headers.get("Content-Encoding"))
                if receiver.delay:
                    time.sleep(receiver.delay)  # the slow Collector, on purpose
                    if receiver.delay:
                        # Still slow: the exporter gave up long ago; what it sent is not
                        # kept, so "metrics resume" can only come from a later export.
                        self.close_connection = True
                        return
                if self.path == "/v1/metrics":
                    receiver.received.add_metrics(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                elif self.path == "/v1/traces":
                    receiver.received.add_traces(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *_args: Any) -> None:
                return None

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                return None  # a client that gave up (broken pipe) is expected here

        server = Server(("127.0.0.1", self.port), Handler)
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True,
                                        name="otlp-http-receiver")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting: later exports see connection refused (the Collector is down)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> OtlpHttpReceiver:
        return self.start() if self._server is None else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class OtlpGrpcReceiver:
    """OTLP/gRPC on ``127.0.0.1:port``: the metrics and trace services."""

    def __init__(self, port: int = 0, received: Received | None = None) -> None:
        self.received = received or Received()
        self.port = port
        self._server: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpGrpcReceiver:
        import grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc

        received = self.received

        class Metrics(mgrpc.MetricsServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                received.add_metrics(request)
                return ExportMetricsServiceResponse()

        class Traces(tgrpc.TraceServiceServicer):  # type: ignore[misc]
            def Export(self, request: Any, context: Any) -> Any:
                received.add_traces(request)
                return ExportTraceServiceResponse()

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        mgrpc.add_MetricsServiceServicer_to_server(Metrics(), server)
        tgrpc.add_TraceServiceServicer_to_server(Traces(), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None

    def __enter__(self) -> OtlpGrpcReceiver:
        return self.start() if self._server is None else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def otlp_env(endpoint: str, protocol: str = "http/protobuf", interval_ms: int = 500,
             **extra: str) -> dict[str, str]:
    """Worker environment for exporting metrics and traces over OTLP to ``endpoint``.

    Keeps ``celery`` instrumented (tests.support.Worker disables it by default) so its
    spans travel through the same pipeline.
    """
    env = {
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
        "OTEL_METRIC_EXPORT_INTERVAL": str(interval_ms),
        # Spans leave each process quickly, so tests can wait on them.
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "celery_worker",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "redis,urllib,urllib3,requests",
    }
    env.update(extra)
    return env

