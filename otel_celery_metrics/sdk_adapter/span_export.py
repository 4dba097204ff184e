"""Relayed spans as OTLP bytes: encoded in the pool child, batched and sent by the user's
own span processor and exporter in the main process (part of the SDK adapter).

Why: rebuilding each relayed span as a ``ReadableSpan`` in the main process and encoding
it there put about 200 µs of CPU per task on the prefork worker's busiest process. Pool
children run in parallel; the main process only batches bytes.

- Pool child, :func:`child_span_encoder`: each ended span becomes ``(scope part, span
  bytes)``, the span encoded by opentelemetry-exporter-otlp-proto-common, the encoder the
  OTLP exporters use (so the bytes are what the child's own exporter would have sent,
  dropped-attribute counts and flags included); the scope part is encoded once per scope.
- Main process, :class:`EncodedSpanRoute`: when every span processor of the worker's
  tracer provider is the SDK's ``BatchSpanProcessor`` or ``SimpleSpanProcessor`` around the
  OTLP span exporter (http/protobuf or gRPC, exactly those classes), a relayed span is
  handed to those processors as an :class:`EncodedSpan` (no ``ReadableSpan``): the
  processor queues and batches it with the user's settings (``OTEL_BSP_*``) and calls the
  user's exporter, whose ``export`` turns the batch into a request through its module's
  ``encode_spans``. The route replaces that function, in the two exporter modules, with
  one that assembles :class:`EncodedSpan` s into the request from bytes (:mod:`.otlp_wire`)
  under the main process' resource and encodes any other span with the original function.
  Endpoint, headers, compression, TLS, timeout, retries and the exporter's own metrics are
  the exporter's, unchanged. Any
  other processor or exporter (console, a custom one, a subclass): the route does not
  apply and the relay rebuilds ``ReadableSpan`` s as before.

SDK and exporter internals touched here (checked; :meth:`EncodedSpanRoute.undo` restores):

- ``opentelemetry.exporter.otlp.proto.http.trace_exporter.encode_spans`` and
  ``opentelemetry.exporter.otlp.proto.grpc.trace_exporter.encode_spans`` (module globals,
  replaced in the main process; the replacement passes every call without an
  :class:`EncodedSpan` straight to the original); routed only when the exporter class'
  ``export`` (http) or ``_translate_data`` (gRPC) still names ``encode_spans`` in its code;
- ``opentelemetry.exporter.otlp.proto.common._internal.trace_encoder._encode_span``
  (pool child; without it the public ``encode_spans`` is used, about 3x slower);
- ``TracerProvider._active_span_processor._span_processors`` (read, through
  :mod:`.pool_relay`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from otel_celery_metrics.sdk_adapter.otlp_wire import trace_request

#: The exporter modules whose ``encode_spans`` the route replaces: (module, class, the
#: method that must look ``encode_spans`` up in its module when it exports).
_EXPORTERS = (
    ("opentelemetry.exporter.otlp.proto.http.trace_exporter", "OTLPSpanExporter", "export"),
    ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "OTLPSpanExporter",
     "_translate_data"),
)


class EncodedSpan:
    """A span a pool child encoded, as the main process' span processors carry it.

    The SDK's batch and simple processors read only ``context.trace_flags.sampled`` (every
    relayed span is sampled: children relay sampled spans only); the exporter gets it back
    in a batch and the route's ``encode_spans`` writes its bytes.
    """

    __slots__ = ("body", "scope")
    #: A sampled context shared by every instance (set by the route, before any instance).
    context: Any = None

    def __init__(self, scope: bytes, body: bytes) -> None:
        self.scope = scope
        self.body = body


def child_span_encoder() -> Callable[[Any], tuple[bytes, bytes]] | None:
    """Pool child: ``ReadableSpan`` -> (scope part, serialized OTLP ``Span``); None
    without opentelemetry-exporter-otlp-proto-common."""
    try:
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    except ImportError:
        return None
    try:
        internal = importlib.import_module(
            "opentelemetry.exporter.otlp.proto.common._internal.trace_encoder"
        )
    except ImportError:
        internal = None
    encode_one: Callable[[Any], Any] | None = getattr(internal, "_encode_span", None)
    scopes: dict[Any, bytes] = {}

    def encode(span: Any) -> tuple[bytes, bytes]:
        scope = span.instrumentation_scope
        part = scopes.get(scope)
        if part is None or encode_one is None:
            scope_spans = encode_spans([span]).resource_spans[0].scope_spans[0]
            body = bytes(scope_spans.spans[0].SerializeToString())
            scope_spans.ClearField("spans")
            part = scopes[scope] = bytes(scope_spans.SerializeToString())
            return part, body
        return part, bytes(encode_one(span).SerializeToString())

    return encode


class EncodedSpanRoute:
    """Main process: relayed spans go to the worker's processors as :class:`EncodedSpan`."""

    def __init__(self, sink: Callable[[Any], None], resource: Any) -> None:
        self.sink = sink
        self._resource = resource
        self._resource_part: bytes | None = None
        self._undo: list[Callable[[], None]] = []

    @classmethod
    def for_provider(cls, tracer_provider: Any, processors: Sequence[Any] | None,
                     sink: Callable[[Any], None] | None) -> EncodedSpanRoute | None:
        """A route when every processor batches into an OTLP exporter we know, else None."""
        if not processors or sink is None:
            return None
        known = _exporter_classes()
        try:
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
        except ImportError:
            return None
        for processor in processors:
            if type(processor) not in (BatchSpanProcessor, SimpleSpanProcessor):
                return None
            if type(getattr(processor, "span_exporter", None)) not in known:
                return None
        resource = getattr(tracer_provider, "resource", None)
        if resource is None:
            return None
        return cls(sink, resource)

    def apply(self) -> bool:
        """Replace the exporter modules' ``encode_spans``; False (nothing changed) if their
        shape differs."""
        from opentelemetry.trace import SpanContext, TraceFlags

        EncodedSpan.context = SpanContext(0, 0, False, TraceFlags(TraceFlags.SAMPLED))
        self._resource_part = _resource_part(self._resource)
        for module_name, _, _ in _EXPORTERS:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            original = getattr(module, "encode_spans", None)
            if not callable(original):
                self.undo()
                return False
            replacement = self._encoder(original)
            setattr(module, "encode_spans", replacement)  # noqa: B010
            self._undo.append(_restorer(module, original, replacement))
        return True

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()

    def _encoder(self, original: Callable[[Any], Any]) -> Callable[[Any], Any]:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        resource_part = self._resource_part or b""

        def encode_spans(spans: Any) -> Any:
            ours: dict[bytes, list[bytes]] = {}
            others = []
            for span in spans:
                if type(span) is EncodedSpan:
                    group = ours.get(span.scope)
                    if group is None:
                        group = ours[span.scope] = []
                    group.append(span.body)
                else:
                    others.append(span)
            if not ours:
                return original(spans)
            data = trace_request(resource_part, ours.items())
            if others:
                data += original(others).SerializePartialToString()
            # A real request: whatever the exporter does with it works as with its own.
            return ExportTraceServiceRequest.FromString(data)

        return encode_spans


def _exporter_classes() -> tuple[type, ...]:
    """The exporter classes installed whose export still encodes through their module's
    ``encode_spans`` (checked in the method's code: an exporter release that encodes
    otherwise is not routed, rather than handed spans it cannot encode)."""
    classes = []
    for module_name, class_name, method in _EXPORTERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        code = getattr(getattr(cls, method, None), "__code__", None)
        if isinstance(cls, type) and "encode_spans" in getattr(code, "co_names", ()):
            classes.append(cls)
    return tuple(classes)


def _resource_part(resource: Any) -> bytes:
    """The serialized ``ResourceSpans`` of ``resource`` without scopes (public encoder)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    probe = ReadableSpan(name="probe", context=SpanContext(1, 1, False), resource=resource)
    resource_spans = encode_spans([probe]).resource_spans[0]
    resource_spans.ClearField("scope_spans")
    return bytes(resource_spans.SerializeToString())


def _restorer(module: Any, original: Any, replacement: Any) -> Callable[[], None]:
    def restore() -> None:
        # Only if nobody replaced it since: never clobber a later change.
        if getattr(module, "encode_spans", None) is replacement:
            module.encode_spans = original

    return restore
