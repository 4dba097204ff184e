"""KEDA's external scaler gRPC API, answered from the exporter's own view of a queue.

For clusters that scale without Prometheus in the loop (``--keda-scaler-port``, off by
default). A ScaledObject's ``external`` trigger names this server and, in its metadata, the
``queue``, the pool ``processesPerReplica`` and the ``tasksPerProcess`` wanted (default 1).
The answers use the same terms as docs/deploy/celery-autoscaling-rules.yml, as the exporter
alone sees them (docs/autoscaling.md):

- outstanding = messages waiting in the broker + Redis unacked messages waiting for a
  process + tasks executing (task events); ETA tasks not yet due are left out;
- ``GetMetrics`` gives outstanding / processesPerReplica; ``GetMetricSpec`` gives the target
  tasksPerProcess, so KEDA's ceil(value / target) is the replicas wanted;
- ``IsActive`` / ``StreamIsActive``: not idle (anything outstanding or scheduled).

A queue probe result older than ``stale_after`` (or none yet) is an UNAVAILABLE error, not
a 0: KEDA then keeps the replicas it has rather than scaling a busy fleet to zero.

The messages are described here as protobuf descriptors built at start-up (the wire format
of KEDA's ``externalscaler.proto``, package ``externalscaler``), so no generated code ships.
``grpcio`` and ``protobuf`` come with ``pip install 'otel-celery-metrics[keda-scaler]'``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

SERVICE = "externalscaler.ExternalScaler"
INSTALL_HINT = "pip install 'otel-celery-metrics[keda-scaler]'"

#: message -> fields (name, number, type, label, message type); KEDA's externalscaler.proto.
_STRING, _BOOL, _INT64, _DOUBLE, _MESSAGE = 9, 8, 3, 1, 11
_OPTIONAL, _REPEATED = 1, 3
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "ScaledObjectRef": [("name", 1, _STRING, _OPTIONAL, ""),
                        ("namespace", 2, _STRING, _OPTIONAL, ""),
                        ("scalerMetadata", 3, _MESSAGE, _REPEATED,
                         ".externalscaler.ScaledObjectRef.ScalerMetadataEntry")],
    "IsActiveResponse": [("result", 1, _BOOL, _OPTIONAL, "")],
    "GetMetricSpecResponse": [("metricSpecs", 1, _MESSAGE, _REPEATED,
                               ".externalscaler.MetricSpec")],
    "MetricSpec": [("metricName", 1, _STRING, _OPTIONAL, ""),
                   ("targetSize", 2, _INT64, _OPTIONAL, ""),
                   ("targetSizeFloat", 3, _DOUBLE, _OPTIONAL, "")],
    "GetMetricsRequest": [("scaledObjectRef", 1, _MESSAGE, _OPTIONAL,
                           ".externalscaler.ScaledObjectRef"),
                          ("metricName", 2, _STRING, _OPTIONAL, "")],
    "GetMetricsResponse": [("metricValues", 1, _MESSAGE, _REPEATED,
                            ".externalscaler.MetricValue")],
    "MetricValue": [("metricName", 1, _STRING, _OPTIONAL, ""),
                    ("metricValue", 2, _INT64, _OPTIONAL, ""),
                    ("metricValueFloat", 3, _DOUBLE, _OPTIONAL, "")],
}


def message_classes() -> dict[str, Any]:
    """The protobuf message classes of the API, by name (raises ImportError without protobuf)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(
        name="otel_celery_metrics_externalscaler.proto", package="externalscaler",
        syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            message.field.add(name=field_name, number=number, type=kind, label=label,
                              type_name=type_name or None, json_name=field_name)
        if name == "ScaledObjectRef":  # map<string, string> scalerMetadata
            entry = message.nested_type.add(name="ScalerMetadataEntry")
            entry.options.map_entry = True
            entry.field.add(name="key", number=1, type=_STRING, label=_OPTIONAL)
            entry.field.add(name="value", number=2, type=_STRING, label=_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {name: message_factory.GetMessageClass(
        pool.FindMessageTypeByName(f"externalscaler.{name}")) for name in _MESSAGES}


@dataclass(frozen=True)
class QueueView:
    """What the exporter knows of one queue now; None when it cannot vouch for it."""

    outstanding: float
    scheduled: float


class ScalerError(Exception):
    """A request the scaler cannot answer (bad metadata, no fresh data)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ExternalScaler:
    """The four RPCs, on ``view(queue)`` (a :class:`QueueView`, or None: no fresh data)."""

    def __init__(self, view: Callable[[str], QueueView | None], stream_interval: float,
                 stop: threading.Event) -> None:
        self._view = view
        self._interval = stream_interval
        self._stop = stop
        self.messages = message_classes()

    # -- the RPCs -------------------------------------------------------------------------

    def is_active(self, ref: Any) -> Any:
        return self.messages["IsActiveResponse"](result=self._active(ref))

    def stream_is_active(self, ref: Any) -> Iterator[Any]:
        while not self._stop.is_set():
            yield self.messages["IsActiveResponse"](result=self._active(ref))
            self._stop.wait(self._interval)

    def get_metric_spec(self, ref: Any) -> Any:
        queue, _, per_process = self._metadata(ref)
        spec = self.messages["MetricSpec"](metricName=metric_name(queue),
                                           targetSize=max(1, round(per_process)),
                                           targetSizeFloat=per_process)
        return self.messages["GetMetricSpecResponse"](metricSpecs=[spec])

    def get_metrics(self, request: Any) -> Any:
        queue, per_replica, _ = self._metadata(request.scaledObjectRef)
        value = self._queue(queue).outstanding / per_replica
        metric = self.messages["MetricValue"](metricName=request.metricName or metric_name(queue),
                                              metricValue=round(value), metricValueFloat=value)
        return self.messages["GetMetricsResponse"](metricValues=[metric])

    # -- helpers --------------------------------------------------------------------------

    def _active(self, ref: Any) -> bool:
        queue, _, _ = self._metadata(ref)
        view = self._queue(queue)
        return view.outstanding > 0 or view.scheduled > 0

    def _queue(self, queue: str) -> QueueView:
        view = self._view(queue)
        if view is None:
            raise ScalerError("UNAVAILABLE", f"no fresh queue probe result for {queue!r}")
        return view

    @staticmethod
    def _metadata(ref: Any) -> tuple[str, float, float]:
        meta = dict(ref.scalerMetadata)
        queue = meta.get("queue", "")
        if not queue:
            raise ScalerError("INVALID_ARGUMENT", "scalerMetadata.queue is required")
        numbers = []
        for key, default in (("processesPerReplica", "1"), ("tasksPerProcess", "1")):
            raw = meta.get(key, default)
            try:
                number = float(raw)
            except ValueError:
                number = 0.0
            if not number > 0:
                raise ScalerError("INVALID_ARGUMENT",
                                  f"scalerMetadata.{key} must be a number > 0: {raw!r}")
            numbers.append(number)
        return queue, numbers[0], numbers[1]


def metric_name(queue: str) -> str:
    return f"celery-outstanding-{queue}"


def serve(scaler: ExternalScaler, host: str, port: int) -> Any:
    """Start a gRPC server for ``scaler`` on host:port; returns it (``.stop(grace)``)."""
    import grpc

    def unary(method: Callable[[Any], Any], request_type: str) -> Any:
        def handle(request: Any, context: Any) -> Any:
            try:
                return method(request)
            except ScalerError as exc:
                context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        return grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=scaler.messages[request_type].FromString,
            response_serializer=lambda m: m.SerializeToString())

    def stream(request: Any, context: Any) -> Iterator[Any]:
        try:
            yield from scaler.stream_is_active(request)
        except ScalerError as exc:
            context.abort(getattr(grpc.StatusCode, exc.code), str(exc))

    handlers = {
        "IsActive": unary(scaler.is_active, "ScaledObjectRef"),
        "GetMetricSpec": unary(scaler.get_metric_spec, "ScaledObjectRef"),
        "GetMetrics": unary(scaler.get_metrics, "GetMetricsRequest"),
        "StreamIsActive": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=scaler.messages["ScaledObjectRef"].FromString,
            response_serializer=lambda m: m.SerializeToString()),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix=
                                                    "otel-celery-exporter-keda"))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"--keda-scaler-port: cannot listen on {host}:{port}")
    server.start()
    _logger.info("KEDA external scaler listening on %s:%s", host, bound)
    return server
