"""Celery signal receivers: turn signals into measurements for a sink.

The receivers do not know which process they run in. Task outcomes are not recorded here
but from Celery's request callbacks (:mod:`otel_celery_metrics.worker.outcomes`); the signals
used here are the producer's, the worker main process' own (``task_revoked``,
``task_unknown``, ``task_rejected``; received messages are counted where Celery builds
their request, see :mod:`otel_celery_metrics.worker.outcomes`) and, only when exemplars are on,
``task_prerun``/``task_postrun`` to note the span each task ran in. Under prefork those
two fire in pool children; the sink behind them is switched by
:mod:`otel_celery_metrics.pool.prefork`, never by a branch here.

Every receiver catches its own exceptions (:class:`FailureLog`): a broken metric must not
fail, retry or slow down a user's task.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER
from otel_celery_metrics.core.routing import delivered_queue, published_queue
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.sinks import MeasurementSink
from otel_celery_metrics.worker.outcomes import TaskOutcomes

__all__ = ["TaskReceivers"]

# Bound on tasks started but not finished in one process (exemplar spans). Postrun always
# follows prerun in the same process; this only protects against sequences not foreseen.
_MAX_IN_FLIGHT = 10_000

_TASKS = mt.METRIC_INDEX[mt.TASKS.name]
_PUBLISHED = mt.METRIC_INDEX[mt.TASKS_PUBLISHED.name]
_RECEIVED = mt.METRIC_INDEX[mt.TASKS_RECEIVED.name]


def _sampled_span() -> tuple[int, int] | None:
    """(trace id, span id) of the current span if it is sampled, for exemplars."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid and context.trace_flags.sampled:
        return context.trace_id, context.span_id
    return None


class TaskReceivers:
    """The receivers, bound to a sink and clocks. Connect with :meth:`connect`."""

    def __init__(
        self,
        sink: MeasurementSink,
        failures: FailureLog,
        default_queue: str = "unknown",
        wall_clock: Callable[[], float] = time.time,
        outcomes: TaskOutcomes | None = None,
    ) -> None:
        self._sink = sink
        self._failures = failures
        self._default_queue = default_queue
        self._wall_clock = wall_clock
        self._outcomes = outcomes
        # The destination queue of the message this thread is publishing now.
        self._publishing = threading.local()
        # task id -> span sampled at prerun (or None). The span is looked up at prerun and,
        # if there was none, again at postrun: whichever of our receivers and the tracing
        # instrumentation's runs first, one lookup sees the task's span open.
        self._spans: dict[str, tuple[int, int] | None] = {}
        self._connected: list[tuple[Any, Callable[..., None]]] = []

    # -- wiring ----------------------------------------------------------------------------

    def connect(self) -> None:
        from celery import signals  # Celery is an extra: import only when instrumenting

        table: list[tuple[Any, Callable[..., None]]] = [
            (signals.before_task_publish, self.on_before_publish),
            (signals.after_task_publish, self.on_after_publish),
            (signals.task_revoked, self.on_revoked),
            (signals.task_unknown, self.on_unknown),
            (signals.task_rejected, self.on_rejected),
        ]
        if self._outcomes is not None:
            # Fires only for failing tasks; counts only what the main process reports.
            table.append((signals.task_failure, self._outcomes.on_failure_signal))
        self._connect(table)

    def connect_exemplars(self) -> None:
        """Note the span each task runs in: the only per-task signals we use, and only to
        link runtime points to traces."""
        from celery import signals

        self._connect([
            (signals.task_prerun, self.on_prerun),
            (signals.task_postrun, self.on_postrun),
        ])

    def _connect(self, table: list[tuple[Any, Callable[..., None]]]) -> None:
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

    def on_before_publish(
        self,
        headers: Any = None,
        declare: Any = None,
        exchange: Any = None,
        routing_key: Any = None,
        **_: Any,
    ) -> None:
        try:
            # Protocol 2 headers travel to the worker and become task.request fields.
            if isinstance(headers, dict):
                headers[PUBLISHED_AT_HEADER] = self._wall_clock()
            # Only this signal names the queue Celery resolved (``declare``); the count
            # waits for after_task_publish, in the same thread, so that it counts only
            # messages actually published.
            self._publishing.headers = headers
            self._publishing.queue = published_queue(
                declare, exchange, routing_key, headers, self._default_queue
            )
        except Exception as exc:  # noqa: BLE001
            self._failures.record("before_task_publish receiver", exc)

    def on_after_publish(self, sender: Any = None, headers: Any = None, **_: Any) -> None:
        try:
            name = headers.get("task") if isinstance(headers, dict) else None
            name = name or (sender if isinstance(sender, str) else "unknown")
            publishing = self._publishing
            queue = self._default_queue
            if getattr(publishing, "headers", None) is headers:
                queue = publishing.queue
                publishing.headers = publishing.queue = None
            self._sink.emit(_PUBLISHED, 1, (name, queue))
            self._sink.flush()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("after_task_publish receiver", exc)

    # -- worker main process -----------------------------------------------------------------

    def on_revoked(self, sender: Any = None, request: Any = None, **_: Any) -> None:
        try:
            # ``request`` is the task's Context here, ``sender`` the task.
            name = getattr(sender, "name", None) or getattr(request, "task", None)
            queue = delivered_queue(getattr(request, "delivery_info", None), self._default_queue)
            self._sink.emit(_TASKS, 1, (str(name), queue, "REVOKED"))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_revoked receiver", exc)

    def on_unknown(self, name: Any = None, message: Any = None, **_: Any) -> None:
        try:
            queue = delivered_queue(getattr(message, "delivery_info", None), self._default_queue)
            # The name comes from the message, not from a registered task: text only.
            label = name if isinstance(name, str) and name else "unknown"
            self._sink.emit(_TASKS, 1, (label, queue, "REJECTED"))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_unknown receiver", exc)

    def on_rejected(self, message: Any = None, **_: Any) -> None:
        try:
            headers = getattr(message, "headers", None) or {}
            name = headers.get("task")
            label = name if isinstance(name, str) and name else "unknown"
            queue = delivered_queue(getattr(message, "delivery_info", None), self._default_queue)
            self._sink.emit(_TASKS, 1, (label, queue, "REJECTED"))
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_rejected receiver", exc)

    # -- exemplar spans (the task's own process: a pool child under prefork) ------------------

    def on_prerun(self, task_id: Any = None, **_: Any) -> None:
        try:
            if len(self._spans) >= _MAX_IN_FLIGHT:
                self._spans.clear()
            self._spans[task_id] = _sampled_span()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_prerun receiver", exc)

    def on_postrun(self, task_id: Any = None, **_: Any) -> None:
        try:
            span = self._spans.pop(task_id, None) or _sampled_span()
            if span is not None:
                self._sink.span(str(task_id), span[0], span[1])
                self._sink.flush()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_postrun receiver", exc)
