"""The two shapes of "where measurements go", named once.

- :class:`MeasurementSink`: what the worker's signal receivers and hook checks send to --
  ``emit`` a measurement, note an exemplar ``span``, ``flush`` at a task's end. In the main
  process it records straight into the recorder; in a pool child it forwards to the main
  process (:class:`otel_celery_metrics.pool.prefork.SwitchableSink` is the one
  implementation).
- :class:`TaskRecording`: what task outcomes are recorded into, in the process that owns the
  request -- :class:`otel_celery_metrics.recording.recorder.Recorder`.

(The pool-child relay's queue towards the main process is a third, narrower thing: the
relay's ``Outbox``, in :mod:`otel_celery_metrics.pool.relay`.)
"""

from __future__ import annotations

from typing import Protocol

from otel_celery_metrics.recording.admission import AttrValues
from otel_celery_metrics.recording.recorder import SpanIds

__all__ = ["MeasurementSink", "TaskRecording"]


class MeasurementSink(Protocol):
    def emit(self, metric: int, value: float, attrs: AttrValues) -> None: ...

    def span(self, task_id: str, trace_id: int, span_id: int) -> None: ...

    def flush(self) -> None: ...


class TaskRecording(Protocol):
    def emit(
        self, metric: int, value: float, attrs: AttrValues, span: SpanIds | None = None
    ) -> None: ...

    def task_received(self, name: str, queue: str) -> None: ...

    def task_ended(
        self,
        name: str,
        queue: str,
        state: str,
        runtime: float | None,
        *,
        span: SpanIds | None = None,
        wait: tuple[str, float] | None = None,
    ) -> None: ...
