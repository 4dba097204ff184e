"""The prefork bridge's wire format: datagrams, their entries, and relayed points and spans.

Every datagram a pool child sends the worker's main process is
``marshal.dumps((dropped, entries), MARSHAL_VERSION)`` (:func:`encode_datagram`):
``dropped`` counts measurements the child had to drop (a full buffer), and each entry is
one of, told apart by its first element,

- a measurement of ours: ``(metric index >= 0, value, attribute values, ...)``;
- :data:`EXEMPLAR_ENTRY`: ``(-1, task id, trace id, span id)``, the span of a task run;
- :data:`POINT_ENTRY`: ``(-2, point)``, a relayed metric point (below);
- :data:`SPAN_ENTRY`: ``(-3, span)``, a relayed span (below);
- :data:`SPAN_OTLP_ENTRY`: ``(-4, scope part, span bytes)``, a relayed span the child
  encoded as OTLP protobuf (``sdk_adapter/span_export.py``), used when the worker's span
  processors batch into an OTLP exporter.

This module owns that format: the child's forwarder encodes with it, the main process'
bridge decodes with :func:`decode_datagram`.


A pool child turns what its SDK collected (delta points) and the spans that ended in it
into tuples of str/int/float/bool; the main process turns them back into what the SDK
of the main process consumes. Plain tuples, not pickles or OTLP protobuf: ``marshal``
encodes them in about a microsecond, both ends are the same interpreter, and the main
process never executes anything a child sends. The resource is never sent: everything
relayed is exported under the main process' resource, the worker's one identity.

Metric point, one per attribute set and metric:
``(scope, metric, attributes, data)`` with

- ``scope``: ``(name, version, schema_url)``;
- ``metric``: ``(name, description, unit, kind, monotonic, bounds)``, ``kind`` one of
  :data:`SUM`, :data:`GAUGE`, :data:`HISTOGRAM` (``bounds`` is empty but for histograms);
- ``attributes``: sorted ``(key, value)`` pairs, sequences as tuples;
- ``data``: sum ``(start ns, value)``; gauge ``(time ns, value)``; histogram
  ``(start ns, bucket counts, sum, count, min, max)``.

Span: ``(name, context, parent, kind, start, end, status, attributes, events, links,
scope)``; contexts are ``(trace id, span id, flags, is_remote, trace state pairs)``.
"""

from __future__ import annotations

import marshal
from collections.abc import Iterable, Mapping
from typing import Any

#: Entry markers (a measurement of ours starts with its metric index, >= 0).
EXEMPLAR_ENTRY = -1
POINT_ENTRY = -2
SPAN_ENTRY = -3
SPAN_OTLP_ENTRY = -4
#: (EXEMPLAR_ENTRY, task id, trace id, span id)
ExemplarEntry = tuple[int, str, int, int]
# marshal's format is stable per version; both ends are the same interpreter anyway.
MARSHAL_VERSION = 4


def encode_datagram(dropped: int, entries: list[Any]) -> bytes:
    """One datagram: what the child dropped since its last send, and its entries."""
    return marshal.dumps((dropped, entries), MARSHAL_VERSION)


def decode_datagram(data: bytes) -> tuple[int, list[Any]]:
    """(dropped, entries) of one datagram; raises on anything else."""
    # marshal executes nothing (unlike pickle), and the socketpair's only writers are the
    # worker's own pool children.
    dropped, entries = marshal.loads(data)  # noqa: S302
    return int(dropped), list(entries)

SUM = "sum"
GAUGE = "gauge"
HISTOGRAM = "histogram"

Scope = tuple[str, str, str]
MetricKey = tuple[str, str, str, str, bool, tuple[float, ...]]
Attrs = tuple[tuple[str, Any], ...]
Point = tuple[Scope, MetricKey, Attrs, tuple[Any, ...]]


class UnsupportedData(ValueError):
    """A metric whose aggregation the relay cannot merge (exponential histograms)."""


def attrs_of(attributes: Mapping[str, Any] | None) -> Attrs:
    if not attributes:
        return ()
    return tuple(
        sorted(
            (k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in attributes.items()
        )
    )


def _scope(scope: Any) -> Scope:
    return (str(scope.name), str(scope.version or ""), str(scope.schema_url or ""))


def encode_metrics(data: Any, skip_scopes: frozenset[str]) -> tuple[list[Point], list[str]]:
    """Every point of an SDK ``MetricsData`` (delta temporality); and the metrics skipped.

    Points of scopes in ``skip_scopes`` are left out (our own meter: the main process
    records those itself).
    """
    from opentelemetry.sdk.metrics.export import Gauge, Histogram, Sum

    points: list[Point] = []
    unsupported: list[str] = []
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            if scope_metrics.scope.name in skip_scopes:
                continue
            scope = _scope(scope_metrics.scope)
            for metric in scope_metrics.metrics:
                body = metric.data
                if isinstance(body, Sum):
                    key: MetricKey = (metric.name, metric.description or "", metric.unit or "",
                                      SUM, bool(body.is_monotonic), ())
                    points.extend(
                        (scope, key, attrs_of(p.attributes), (p.start_time_unix_nano, p.value))
                        for p in body.data_points
                    )
                elif isinstance(body, Gauge):
                    key = (metric.name, metric.description or "", metric.unit or "",
                           GAUGE, False, ())
                    points.extend(
                        (scope, key, attrs_of(p.attributes), (p.time_unix_nano, p.value))
                        for p in body.data_points
                    )
                elif isinstance(body, Histogram):
                    for p in body.data_points:
                        key = (metric.name, metric.description or "", metric.unit or "",
                               HISTOGRAM, False, tuple(float(b) for b in p.explicit_bounds))
                        points.append((
                            scope, key, attrs_of(p.attributes),
                            (p.start_time_unix_nano, tuple(p.bucket_counts), p.sum, p.count,
                             p.min, p.max),
                        ))
                else:
                    unsupported.append(metric.name)
    return points, unsupported


def _context(ctx: Any) -> tuple[int, int, int, bool, tuple[tuple[str, str], ...]]:
    state = tuple(ctx.trace_state.items()) if ctx.trace_state else ()
    return (ctx.trace_id, ctx.span_id, int(ctx.trace_flags), bool(ctx.is_remote), state)


def encode_span(span: Any) -> tuple[Any, ...]:
    """An ended SDK ``ReadableSpan`` as plain tuples (its resource left out)."""
    scope = span.instrumentation_scope
    return (
        span.name,
        _context(span.context),
        _context(span.parent) if span.parent is not None else None,
        int(span.kind.value),
        span.start_time,
        span.end_time,
        (int(span.status.status_code.value), span.status.description),
        attrs_of(span.attributes),
        tuple((e.name, e.timestamp, attrs_of(e.attributes)) for e in span.events),
        tuple((_context(link.context), attrs_of(link.attributes)) for link in span.links),
        _scope(scope) if scope is not None else ("", "", ""),
    )


def _span_context(raw: Iterable[Any]) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    trace_id, span_id, flags, is_remote, state = raw
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags), TraceState(list(state)))


def decode_span(raw: tuple[Any, ...], resource: Any) -> Any:
    """A ``ReadableSpan`` of the main process, under ``resource``, from :func:`encode_span`."""
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanKind
    from opentelemetry.trace.status import Status, StatusCode

    name, ctx, parent, kind, start, end, status, attrs, events, links, scope = raw
    return ReadableSpan(
        name=name,
        context=_span_context(ctx),
        parent=_span_context(parent) if parent is not None else None,
        resource=resource,
        attributes=dict(attrs),
        events=[Event(n, dict(a), timestamp=t) for n, t, a in events],
        links=[Link(_span_context(c), dict(a)) for c, a in links],
        kind=SpanKind(kind),
        status=Status(StatusCode(status[0]), status[1]),
        start_time=start,
        end_time=end,
        instrumentation_scope=InstrumentationScope(scope[0], scope[1] or None, scope[2] or None),
    )

