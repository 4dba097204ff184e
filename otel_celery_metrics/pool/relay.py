"""The pool-child relay: what OpenTelemetry records in a pool child reaches the main process.

Application metrics and other instrumentations' metrics (``flower.task.runtime.seconds``
of opentelemetry-instrumentation-celery) and spans recorded inside tasks are recorded
in pool children, whose copies of the SDK serve and export nothing. :class:`PoolRelay`
moves them to the worker's main process, which serves ``/metrics`` and exports OTLP under
the worker's one identity.

In a pool child (:meth:`PoolRelay.start_in_child`, from ``worker_process_init``):

- a metric reader that wants deltas replaces the inherited readers, so every
  measurement is aggregated once, by the SDK, as in a solo worker. A relay thread
  collects it every ``interval`` seconds; a collection with no points sends nothing, so
  a task that records nothing costs nothing. The child's exit hook collects once more
  (CPU only, no waiting) and the bridge makes its one non-blocking send: a recycled child
  leaves nothing behind;
- a span processor replaces the inherited ones: each ended span is encoded and queued
  for the same sends. The child never exports, so nothing delays its exit;
- entries travel over the prefork bridge's socketpair (:mod:`otel_celery_metrics.pool.prefork`),
  bounded like everything else there. Metrics are not collected while earlier entries
  are still unsent: the SDK's delta storage holds them meanwhile, so backpressure costs
  no measurements.

In the main process (:meth:`PoolRelay.receive`): points are merged into
:class:`~otel_celery_metrics.pool.relay_store.RelayStore`, which every metric reader reads
at collection (:meth:`PoolRelay.attach`); spans are rebuilt under the main process'
resource and handed to its span processors.

A child killed with SIGKILL loses what it recorded since its last send (at most one
``interval``) and the span of the task it was running. See ``docs/prefork.md``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.codec import (
    POINT_ENTRY,
    SPAN_ENTRY,
    SPAN_OTLP_ENTRY,
    decode_span,
    encode_metrics,
    encode_span,
)
from otel_celery_metrics.pool.relay_store import ReaderView, RelayStore, merge_into
from otel_celery_metrics.sdk_adapter import SdkAdapter, pool_relay, span_export


class Outbox(Protocol):
    """The child's end of the bridge (``_child_forwarder.ChildForwarder``)."""

    @property
    def pending(self) -> int: ...

    def extend(self, entries: list[tuple[Any, ...]]) -> None: ...

    def flush(self) -> None: ...


class PoolRelay:
    """Both ends of the relay; built in the main process, started in each pool child."""

    def __init__(
        self,
        meter_provider: Any,
        failures: FailureLog,
        *,
        count: Callable[[str, int], None],
        skip_scopes: frozenset[str],
        interval: float = 1.0,
        store: RelayStore | None = None,
        tracer_provider: Callable[[], Any] | None = None,
        encoded_spans: bool = True,
    ) -> None:
        self._meter_provider = meter_provider
        self._failures = failures
        self._count = count
        self._skip_scopes = skip_scopes
        self.interval = interval
        self.store = store if store is not None else RelayStore()
        self._tracer_provider = tracer_provider or _global_tracer_provider
        self._views: dict[int, ReaderView] = {}
        self._attached = False
        self._relay_metrics = False
        #: Attached to a meter provider that is not the SDK's: children record where we
        #: cannot reach (said when a worker first forks its pool, the only time it matters).
        self._unreachable_metrics = False
        self._span_sink: Callable[[Any], None] | None = None
        self._span_resource: Any = None
        #: The main process' tracer provider when it first forked a child.
        self._forked_tracer_provider: Any = None
        #: Children send OTLP-encoded spans, batched as bytes by the worker's own
        #: processors (when those are the SDK's around an OTLP exporter; False: always
        #: rebuild ReadableSpans, the previous design, kept for other processors).
        self._encoded_spans = encoded_spans
        self._span_route: span_export.EncodedSpanRoute | None = None
        self._span_encoder: Callable[[Any], tuple[bytes, bytes]] | None = None
        # Pool child state.
        self._outbox: Outbox | None = None
        self._reader: Any = None
        self._collect_lock = threading.Lock()
        self._stop = threading.Event()

    def reinit_locks(self) -> None:
        """New locks in a forked child (see ``Recorder.reinit_locks``)."""
        self._collect_lock = threading.Lock()
        self._stop = threading.Event()
        self.store.reinit_locks()

    # -- main process ------------------------------------------------------------------------

    def before_first_fork(self) -> None:
        """Main process, before its first fork: note the tracer provider children inherit,
        and say so if what they record through the metrics API cannot reach us."""
        self._forked_tracer_provider = self._tracer_provider()
        if self._encoded_spans and self._span_route is None:
            self._span_route = self._encoded_span_route(self._forked_tracer_provider)
        if self._unreachable_metrics:
            self._failures.record(
                "relaying the metrics pool children record",
                TypeError("the meter provider is not the OpenTelemetry SDK's; spans are still "
                          "relayed"),
            )

    def _encoded_span_route(self, provider: Any) -> span_export.EncodedSpanRoute | None:
        try:
            route = span_export.EncodedSpanRoute.for_provider(
                provider, pool_relay.span_processors(provider), pool_relay.span_sink(provider)
            )
            if route is not None and route.apply():
                return route
        except Exception as exc:  # noqa: BLE001 - spans are then relayed as before
            self._failures.record("setting up the OTLP path of relayed spans", exc)
        return None

    def attach(self, adapter: SdkAdapter) -> int:
        """Make every reader the adapter hooked include the relayed series (the adapter's
        undo() takes them out again). Returns how many readers that is."""
        self._attached = True
        readers = adapter.add_relayed(self._produce)
        # No reader here, nothing to relay metrics to: children leave their readers alone.
        # An SDK provider without readers has nothing to serve: nothing to say.
        self._relay_metrics = readers > 0
        self._unreachable_metrics = readers == 0 and not adapter.is_sdk
        return readers

    def detach(self) -> None:
        """Readers no longer get relayed series; the span exporters are put back."""
        self._attached = False
        if self._span_route is not None:
            # Relayed spans still queued in the batch processor need the route's encoder:
            # send them first (bounded), then put the exporters back.
            try:
                flush = getattr(self._forked_tracer_provider, "force_flush", None)
                if callable(flush):
                    flush(5_000)
            except Exception as exc:  # noqa: BLE001 - uninstrumenting goes on
                self._failures.record("flushing relayed spans before uninstrumenting", exc)
            self._span_route.undo()
            self._span_route = None

    def _produce(self, reader: Any, data: Any, delta_kinds: frozenset[str]) -> Any:
        if not self._attached:
            return data
        try:
            view = self._views.get(id(reader))
            if view is None:
                view = self._views[id(reader)] = ReaderView(delta_kinds)
            if not len(self.store):
                return data
            resource = pool_relay.provider_resource(self._meter_provider)
            return merge_into(data, self.store.metrics(view), resource)
        except Exception as exc:  # noqa: BLE001 - the reader's own data still goes out
            self._failures.record("adding relayed metrics to a collection", exc)
            return data

    def receive(self, entries: list[tuple[Any, ...]]) -> None:
        """Entries a child sent (already decoded from the datagram)."""
        points = [entry[1] for entry in entries if entry[0] == POINT_ENTRY]
        spans = [entry[1] for entry in entries if entry[0] == SPAN_ENTRY]
        encoded = [entry for entry in entries if entry[0] == SPAN_OTLP_ENTRY]
        if points:
            self.store.add(points)
            self._count("metrics", len(points))
        if spans:
            self._export_spans(spans)
        if encoded:
            self._export_encoded(encoded)

    def _export_encoded(self, entries: list[tuple[Any, ...]]) -> None:
        route = self._span_route
        if route is None:  # undone since (uninstrument): nowhere to send them
            self._failures.record(
                "exporting spans relayed from pool children",
                RuntimeError(f"{len(entries)} OTLP-encoded spans arrived after uninstrument"),
            )
            return
        sink, make = route.sink, span_export.EncodedSpan
        for _, scope, body in entries:
            sink(make(scope, body))
        self._count("spans", len(entries))

    def _export_spans(self, spans: list[Any]) -> None:
        if self._span_sink is None:
            provider = self._tracer_provider()
            self._span_sink = pool_relay.span_sink(provider)
            self._span_resource = getattr(provider, "resource", None)
            if self._span_sink is None:
                self._failures.record(
                    "exporting spans relayed from pool children",
                    TypeError("the worker's tracer provider is not the SDK's"),
                )
                return
        for raw in spans:
            self._span_sink(decode_span(raw, self._span_resource))
        self._count("spans", len(spans))

    # -- pool child --------------------------------------------------------------------------

    def start_in_child(self, outbox: Outbox) -> None:
        """Relay this pool child's metrics and spans through ``outbox``."""
        self._outbox = outbox
        if self._relay_metrics:
            self._start_metrics_in_child()
        self._start_spans_in_child()

    def _start_metrics_in_child(self) -> None:
        reader = pool_relay.relay_reader(self._on_collected)
        if pool_relay.swap_child_readers(self._meter_provider, reader):
            self._reader = reader
            threading.Thread(target=self._run, name="otel-celery-metrics-relay",
                             daemon=True).start()
        else:
            self._failures.record(
                "relaying a pool child's metrics",
                TypeError("this opentelemetry-sdk's meter provider has an unexpected shape"),
            )

    def _start_spans_in_child(self) -> None:
        # Only the provider inherited from the main process, and only when it has span
        # processors there: one a child sets up for itself (worker_process_init) exports
        # on its own, as its author meant.
        tracer_provider = self._tracer_provider()
        processor = pool_relay.SpanRelay(self._on_span, self._failures.record)
        if tracer_provider is not self._forked_tracer_provider:
            return
        if self._span_route is not None:
            self._span_encoder = span_export.child_span_encoder()
        if pool_relay.has_span_processors(tracer_provider) and not (
            pool_relay.swap_child_span_processors(tracer_provider, processor)
        ):
            self._failures.record(
                "relaying a pool child's spans", TypeError("unexpected span processor shape")
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.collect_and_send()

    def collect_and_send(self, final: bool = False) -> None:
        """Collect this child's deltas (unless earlier entries wait) and send what is queued."""
        outbox = self._outbox
        if outbox is None:
            return
        try:
            if self._reader is not None and (final or not outbox.pending):
                with self._collect_lock:
                    self._reader.collect()
            if outbox.pending:
                outbox.flush()
        except Exception as exc:  # noqa: BLE001 - the relay never raises into a task
            self._failures.record("relaying a pool child's metrics", exc)

    def final_in_child(self) -> None:
        """The child exits: its last deltas join the bridge's final send (no waiting)."""
        if self._outbox is None:
            return
        self._stop.set()
        try:
            if self._reader is not None:
                with self._collect_lock:
                    self._reader.collect()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("relaying a pool child's last metrics", exc)

    def _on_collected(self, data: Any) -> None:
        points, unsupported = encode_metrics(data, self._skip_scopes)
        for name in unsupported:
            self._failures.record(
                f"relaying metric {name!r}",
                TypeError("exponential histograms are not relayed; use explicit buckets"),
            )
        if points and self._outbox is not None:
            self._outbox.extend([(POINT_ENTRY, p) for p in points])

    def _on_span(self, span: Any) -> None:
        if self._outbox is None:
            return
        encoder = self._span_encoder
        if encoder is not None:
            scope, body = encoder(span)
            self._outbox.extend([(SPAN_OTLP_ENTRY, scope, body)])
        else:
            self._outbox.extend([(SPAN_ENTRY, encode_span(span))])


def _global_tracer_provider() -> Any:
    from opentelemetry import trace

    return trace.get_tracer_provider()
