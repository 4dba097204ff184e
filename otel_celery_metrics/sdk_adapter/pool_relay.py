"""The pool-child relay's contact surface with the OpenTelemetry SDK (part of the adapter).

The main process' side, adding the relayed series to every reader's collection, goes
through :meth:`otel_celery_metrics.sdk_adapter.SdkAdapter.add_relayed` (undone with the
adapter); this module holds what pool children and the span path need.

Public SDK API used (no privates): ``MetricReader`` subclassing with a preferred
temporality, ``MetricReader.collect``, ``MeterProvider.add_metric_reader`` and
``remove_metric_reader`` (recent SDKs only), ``ReadableSpan``, ``SpanProcessor``.

SDK privates, every one the relay touches here:

- ``MeterProvider._measurement_consumer._reader_storages`` (keys read): the provider's
  readers (``MeterProvider._all_metric_readers`` is shared by every provider); in a pool
  child, the inherited ones, which the relay's reader replaces;
- SDKs without ``add_metric_reader`` (older releases; pool child): the relay's reader gets
  a ``MetricReaderStorage`` (``opentelemetry.sdk.metrics._internal.metric_reader_storage``,
  built from the reader's ``_instrument_class_temporality``/``_aggregation``/
  ``_cardinality_limit`` and ``MeterProvider._sdk_config``) and the consumer's collect
  callback (``MetricReader._set_collect_callback``), and the inherited readers' storages
  are replaced by a no-op storage (a collection of them returns nothing);
- ``MeterProvider._measurement_consumer._async_instruments`` (replaced, pool child):
  observable instruments registered before the fork belong to the main process, which
  observes them itself; the child's list keeps only those registered in the child;
- ``MeterProvider._sdk_config.resource`` (read, main process): the resource relayed
  points are exported under (:func:`provider_resource`);
- ``SpanProcessor._on_ending`` (implemented as a no-op by :class:`SpanRelay`, the pool
  child's span processor: recent SDKs call it on every processor);
- ``TracerProvider._active_span_processor`` and its ``_span_processors`` / ``_lock``
  (pool child: the inherited processors are replaced by the relay's; main process:
  relayed spans are handed to the worker's processors).

Every function checks the shape it needs and returns False (changing nothing) when the
SDK differs; callers then log an error and count it, and the child behaves as without
the relay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _readers(provider: Any) -> list[Any] | None:
    storages = getattr(getattr(provider, "_measurement_consumer", None), "_reader_storages", None)
    if not isinstance(storages, dict):
        return None
    return list(storages)


def relay_reader(on_metrics: Callable[[Any], None]) -> Any:
    """A metric reader (public API) that wants every instrument as deltas."""
    from opentelemetry.sdk.metrics import (
        Counter,
        Histogram,
        ObservableCounter,
        ObservableGauge,
        ObservableUpDownCounter,
        UpDownCounter,
        _Gauge,
    )
    from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader

    delta = AggregationTemporality.DELTA

    class _RelayReader(MetricReader):
        def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000,
                             **_kwargs: Any) -> None:
            on_metrics(metrics_data)

        def shutdown(self, timeout_millis: float = 30_000, **_kwargs: Any) -> None:
            return None

    return _RelayReader(preferred_temporality={
        Counter: delta, UpDownCounter: delta, Histogram: delta, _Gauge: delta,
        ObservableCounter: delta, ObservableUpDownCounter: delta, ObservableGauge: delta,
    })


def swap_child_readers(provider: Any, reader: Any) -> bool:
    """In a pool child: ``reader`` replaces the inherited readers; pre-fork observables go.

    The inherited readers' storages would aggregate every measurement again, for
    nothing (the child serves and exports nothing).
    """
    readers = _readers(provider)
    consumer = getattr(provider, "_measurement_consumer", None)
    if readers is None or not isinstance(getattr(consumer, "_async_instruments", None), list):
        return False
    public = callable(getattr(provider, "add_metric_reader", None)) and callable(
        getattr(provider, "remove_metric_reader", None)
    )
    if not public:
        return swap_child_readers_without_public_api(provider, reader)
    provider.add_metric_reader(reader)
    consumer._async_instruments = []  # type: ignore[union-attr]
    for inherited in readers:
        if inherited is reader:
            continue
        try:
            provider.remove_metric_reader(inherited)
        except Exception:  # noqa: BLE001, S112 - its shutdown in the child may fail; it is out
            continue
    return True


def swap_child_readers_without_public_api(provider: Any, reader: Any) -> bool:
    """:func:`swap_child_readers` for SDKs without ``MeterProvider.add_metric_reader``."""
    try:
        from opentelemetry.sdk.metrics._internal.metric_reader_storage import (
            MetricReaderStorage,
        )
    except ImportError:
        return False
    consumer = getattr(provider, "_measurement_consumer", None)
    storages = getattr(consumer, "_reader_storages", None)
    sdk_config = getattr(provider, "_sdk_config", None)
    setter = getattr(reader, "_set_collect_callback", None)
    if not isinstance(storages, dict) or sdk_config is None or not callable(setter):
        return False
    args = [sdk_config, reader._instrument_class_temporality,
            reader._instrument_class_aggregation]
    limits = getattr(reader, "_instrument_class_cardinality_limit", None)
    if limits is not None:
        args.append(limits)
    replaced: dict[Any, Any] = dict.fromkeys(storages, _NO_STORAGE)
    replaced[reader] = MetricReaderStorage(*args)
    # One assignment: the consumer iterates whichever dict it read, never a changing one.
    consumer._reader_storages = replaced  # type: ignore[union-attr]
    consumer._async_instruments = []  # type: ignore[union-attr]
    setter(consumer.collect)  # type: ignore[union-attr]
    return True


class _NoStorage:
    """Stands in for an inherited reader's storage in a pool child: keeps nothing."""

    def consume_measurement(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    def collect(self, *_args: Any, **_kwargs: Any) -> None:
        return None


_NO_STORAGE = _NoStorage()


def _multi_processor(tracer_provider: Any) -> Any:
    multi = getattr(tracer_provider, "_active_span_processor", None)
    if not isinstance(getattr(multi, "_span_processors", None), tuple):
        return None
    return multi


def has_span_processors(tracer_provider: Any) -> bool:
    multi = _multi_processor(tracer_provider)
    return multi is not None and bool(multi._span_processors)


def swap_child_span_processors(tracer_provider: Any, processor: Any) -> bool:
    """In a pool child: ``processor`` replaces the inherited span processors.

    In place: tracers created before the fork hold the provider's processor object.
    """
    multi = _multi_processor(tracer_provider)
    if multi is None or not hasattr(multi, "_lock"):
        return False
    with multi._lock:
        multi._span_processors = (processor,)
    return True


def span_processors(tracer_provider: Any) -> tuple[Any, ...] | None:
    """Main process: the worker's span processors (None if the provider is not the SDK's)."""
    multi = _multi_processor(tracer_provider)
    return None if multi is None else tuple(multi._span_processors)


def span_sink(tracer_provider: Any) -> Callable[[Any], None] | None:
    """Main process: where relayed spans go (the worker's own span processors)."""
    multi = _multi_processor(tracer_provider)
    if multi is None:
        return None
    on_end: Callable[[Any], None] = multi.on_end
    return on_end


def provider_resource(provider: Any) -> Any:
    """The resource a meter provider exports under (None when the SDK keeps it elsewhere)."""
    return getattr(getattr(provider, "_sdk_config", None), "resource", None)


class SpanRelay:
    """A pool child's only span processor: queues each ended, sampled span for the relay."""

    def __init__(
        self, on_end: Callable[[Any], None], on_failure: Callable[[str, BaseException], None]
    ) -> None:
        self._on_end = on_end
        self._on_failure = on_failure

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        return None

    def _on_ending(self, span: Any) -> None:
        # An SDK private (SpanProcessor._on_ending, called by recent SDKs before on_end):
        # implemented here, in the adapter, as a no-op.
        return None

    def on_end(self, span: Any) -> None:
        try:
            if span.context is not None and span.context.trace_flags.sampled:
                self._on_end(span)
        except Exception as exc:  # noqa: BLE001 - a span processor must never raise
            self._on_failure("relaying an ended span", exc)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
