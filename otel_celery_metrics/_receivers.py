"""Celery signal receivers: turn signals into measurements for a :class:`MetricSink`.

The receivers do not know which process they run in. Under prefork, the same receivers
fire in the main process (``task_received``, ``task_revoked``, worker-lost failures) and
in pool children (``task_prerun``/``task_postrun``/``task_failure``); the sink behind them
is switched by :mod:`otel_celery_metrics._prefork`, never by a branch here.

Every receiver catches its own exceptions (:class:`FailureLog`): a broken metric must not
fail, retry or slow down a user's task.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from opentelemetry import trace

from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._recorder import AttrValues
from otel_celery_metrics._safety import FailureLog

#: Message header carrying the producer's wall-clock publish time (seconds since epoch).
PUBLISHED_AT_HEADER = "otel_celery_published_at"
#: Request field the worker's main process sets when a message is received; it travels
#: with the request into the pool child, so queue wait can fall back to it.
RECEIVED_AT_FIELD = "otel_celery_received_at"
#: Request field carrying the queue the main process received the message from: failures
#: Celery reports from the main process (a lost pool child) carry no delivery_info.
QUEUE_FIELD = "otel_celery_queue"

# Bound on tasks started but not finished in one process. Postrun always follows prerun
# in the same process, so this only protects against a signal sequence we did not foresee.
_MAX_IN_FLIGHT = 10_000

_TASKS = mt.METRIC_INDEX[mt.TASKS.name]
_RUNTIME = mt.METRIC_INDEX[mt.TASK_RUNTIME.name]
_FAILURES = mt.METRIC_INDEX[mt.TASK_FAILURES.name]
_PUBLISHED = mt.METRIC_INDEX[mt.TASKS_PUBLISHED.name]
_RECEIVED = mt.METRIC_INDEX[mt.TASKS_RECEIVED.name]
_QUEUE_WAIT = mt.METRIC_INDEX[mt.TASK_QUEUE_WAIT.name]


class Sink(Protocol):
    def emit(self, metric: int, value: float, attrs: AttrValues) -> None: ...

    def emit_traced(
        self, metric: int, value: float, attrs: AttrValues, trace_id: int, span_id: int
    ) -> None: ...

    def flush(self) -> None: ...


def queue_of(delivery_info: Any, default: str) -> str:
    """The queue a message was delivered from: its routing key (Celery's default routing
    uses the queue name as routing key), else ``default``."""
    if isinstance(delivery_info, dict):
        key = delivery_info.get("routing_key")
        if key:
            return str(key)
    return default


def queue_of_request(request: Any, default: str) -> str:
    """The queue of a task request: its delivery info, else what the main process noted."""
    queue = queue_of(getattr(request, "delivery_info", None), "")
    if queue:
        return queue
    noted = getattr(request, QUEUE_FIELD, None)
    return str(noted) if noted else default


def _is_celery_reject(exception: Any) -> bool:
    from celery.exceptions import Reject

    return isinstance(exception, Reject)


def _sampled_span() -> tuple[int, int] | None:
    """(trace id, span id) of the current span if it is sampled, for exemplars."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return context.trace_id, context.span_id
    return None


def _eta_timestamp(eta: Any) -> float | None:
    if not eta:
        return None
    try:
        if isinstance(eta, datetime):
            return eta.timestamp()
        return datetime.fromisoformat(str(eta)).timestamp()
    except (TypeError, ValueError, OverflowError):
        return None


class TaskReceivers:
    """The receivers, bound to a sink and clocks. Connect with :meth:`connect`."""

    def __init__(
        self,
        sink: Sink,
        failures: FailureLog,
        default_queue: str = "unknown",
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._failures = failures
        self._default_queue = default_queue
        self._clock = clock
        self._wall_clock = wall_clock
        # task id -> (start, span sampled at prerun, task name, queue). The span is looked
        # up at prerun and, if there was none, again at postrun: whichever of our receivers
        # and the tracing instrumentation's runs first, one lookup sees the span open.
        # Name and queue are read once, at prerun: this is the per-task hot path.
        self._started: dict[str, tuple[float, tuple[int, int] | None, str, str]] = {}
        # Ids of tasks whose failure was reported without a prerun in this process (the
        # main process reporting for a pool child). Celery 5.7 sends task_failure twice
        # for a hard time limit (from on_failure and from on_timeout); count it once.
        self._reported_from_main: OrderedDict[str, None] = OrderedDict()
        self._connected: list[tuple[Any, Callable[..., None]]] = []

    # -- wiring ----------------------------------------------------------------------------

    def connect(self) -> None:
        from celery import signals  # Celery is an extra: import only when instrumenting

        table: list[tuple[Any, Callable[..., None]]] = [
            (signals.before_task_publish, self.on_before_publish),
            (signals.after_task_publish, self.on_after_publish),
            (signals.task_received, self.on_received),
            (signals.task_prerun, self.on_prerun),
            (signals.task_postrun, self.on_postrun),
            (signals.task_failure, self.on_failure),
            (signals.task_revoked, self.on_revoked),
            (signals.task_unknown, self.on_unknown),
            (signals.task_rejected, self.on_rejected),
        ]
        for signal, receiver in table:
            # weak=False: the bound methods are owned by this object, which the
            # instrumentor keeps; dispatch_uid makes a second connect a no-op.
            signal.connect(receiver, weak=False, dispatch_uid=self._uid(receiver))
            self._connected.append((signal, receiver))

    def disconnect(self) -> None:
        for signal, receiver in self._connected:
            signal.disconnect(receiver, dispatch_uid=self._uid(receiver))
        self._connected.clear()

    def _uid(self, receiver: Callable[..., None]) -> str:
        return f"otel_celery_metrics.{receiver.__name__}.{id(self)}"

    # -- producer side -----------------------------------------------------------------------

    def on_before_publish(self, headers: Any = None, **_: Any) -> None:
        try:
            # Protocol 2 headers travel to the worker and become task.request fields.
            if isinstance(headers, dict):
                headers[PUBLISHED_AT_HEADER] = self._wall_clock()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("before_task_publish receiver", exc)

    def on_after_publish(
        self, sender: Any = None, headers: Any = None, routing_key: Any = None, **_: Any
    ) -> None:
        try:
            name = headers.get("task") if isinstance(headers, dict) else None
            name = name or (sender if isinstance(sender, str) else "unknown")
            queue = str(routing_key) if routing_key else self._default_queue
            self._sink.emit(_PUBLISHED, 1, (name, queue))
            if not self._started:
                # Published outside a task (a producer, a beat): nothing else will flush.
                self._sink.flush()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("after_task_publish receiver", exc)

    # -- worker main process -----------------------------------------------------------------

    def on_received(self, request: Any = None, **_: Any) -> None:
        try:
            queue = queue_of(getattr(request, "delivery_info", None), self._default_queue)
            request_dict = getattr(request, "request_dict", None)
            if isinstance(request_dict, dict):
                request_dict[RECEIVED_AT_FIELD] = self._wall_clock()
                request_dict[QUEUE_FIELD] = queue
            self._sink.emit(_RECEIVED, 1, (str(request.name), queue))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_received receiver", exc)

    def on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        try:
            # ``request`` is the task's Context here, ``sender`` the task.
            name = getattr(sender, "name", None) or getattr(request, "task", None)
            queue = queue_of_request(request, self._default_queue)
            self._sink.emit(_TASKS, 1, (str(name), queue, "REVOKED"))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_revoked receiver", exc)

    def on_unknown(self, name: Any = None, message: Any = None, **_: Any) -> None:
        try:
            queue = queue_of(getattr(message, "delivery_info", None), self._default_queue)
            self._sink.emit(_TASKS, 1, (str(name), queue, "REJECTED"))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_unknown receiver", exc)

    def on_rejected(self, message: Any = None, **_: Any) -> None:
        try:
            headers = getattr(message, "headers", None) or {}
            name = headers.get("task") or "unknown"
            queue = queue_of(getattr(message, "delivery_info", None), self._default_queue)
            self._sink.emit(_TASKS, 1, (str(name), queue, "REJECTED"))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_rejected receiver", exc)

    # -- task execution (a pool child under prefork) -------------------------------------------

    def on_prerun(self, task_id: Any = None, task: Any = None, **_: Any) -> None:
        try:
            started = self._clock()
            request = task.request
            name = task.name
            queue = queue_of_request(request, self._default_queue)
            if len(self._started) >= _MAX_IN_FLIGHT:
                self._started.clear()
            self._started[task_id] = (started, _sampled_span(), name, queue)
            reference, wait_from = self._wait_reference(request)
            if reference is not None:
                # Producer and worker clocks can disagree; a negative wait means skew,
                # not time travel, so it is clamped at 0.
                wait = max(0.0, self._wall_clock() - reference)
                self._sink.emit(_QUEUE_WAIT, wait, (name, queue, wait_from))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_prerun receiver", exc)

    @staticmethod
    def _wait_reference(request: Any) -> tuple[float | None, str]:
        published = getattr(request, PUBLISHED_AT_HEADER, None)
        eta = _eta_timestamp(getattr(request, "eta", None))
        if isinstance(published, (int, float)):
            if eta is not None and eta > published:
                return eta, "eta"
            return float(published), "publish"
        received = getattr(request, RECEIVED_AT_FIELD, None)
        if isinstance(received, (int, float)):
            if eta is not None and eta > received:
                return eta, "eta"
            return float(received), "received"
        return None, ""

    def on_postrun(
        self, task_id: Any = None, task: Any = None, state: Any = None, **_: Any
    ) -> None:
        try:
            started = self._started.pop(task_id, None)
            if state is None:
                # The execution was interrupted (the pool child is being terminated at a
                # hard time limit); the main process reports the task's outcome.
                return
            if started is None:
                queue = queue_of_request(task.request, self._default_queue)
                name = task.name
            else:
                start, span, name, queue = started
                runtime = self._clock() - start
                span = span or _sampled_span()
                if span is None:
                    self._sink.emit(_RUNTIME, runtime, (name, queue))
                else:
                    self._sink.emit_traced(_RUNTIME, runtime, (name, queue), span[0], span[1])
            self._sink.emit(_TASKS, 1, (name, queue, str(state)))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_postrun receiver", exc)
        finally:
            try:
                self._sink.flush()
            except Exception as exc:  # noqa: BLE001
                self._failures.record("flushing measurements", exc)

    def on_failure(
        self, sender: Any = None, task_id: Any = None, exception: Any = None, **_: Any
    ) -> None:
        try:
            from_main = task_id not in self._started
            if from_main:
                if task_id in self._reported_from_main:
                    return
                self._reported_from_main[task_id] = None
                if len(self._reported_from_main) > _MAX_IN_FLIGHT:
                    self._reported_from_main.popitem(last=False)
            queue = queue_of_request(sender.request, self._default_queue)
            name = sender.name
            exc_type = type(exception).__name__
            self._sink.emit(_FAILURES, 1, (name, queue, exc_type))
            if from_main and not _is_celery_reject(exception):
                # The task never reached task_postrun in this process: its pool child was
                # lost (WorkerLostError) or killed at the hard time limit, and Celery
                # reports it from the main process. Count its terminal state here.
                # (A Reject reported from the main process already ran to postrun.)
                self._sink.emit(_TASKS, 1, (name, queue, "FAILURE"))
                self._sink.flush()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_failure receiver", exc)
