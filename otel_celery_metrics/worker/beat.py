"""Celery beat: per schedule entry, the sends, how late each was, and when the last one was.

Celery sends no signal when beat sends an entry's task, so :class:`BeatHooks` wraps
:meth:`celery.beat.Scheduler.apply_async` (the one call every scheduler, including
subclasses such as django-celery-beat's, makes for a due entry; ``celery worker -B`` runs
the same code) and undoes it on :meth:`BeatHooks.uninstall`.

Lateness is how far behind its scheduled time a send went out: the entry's schedule says
how long remains until the run after ``last_run_at`` (``remaining_estimate``), which is
negative once that run is overdue. Read before the send, while the entry still holds the
previous run's time. A schedule that cannot estimate (a custom one without
``remaining_estimate``) still counts its sends, without lateness.

Lateness is a number a schedule computes from stored times (a scheduler's database can
hold anything): it passes :func:`otel_celery_metrics.core.values.lateness`, and one that
is not finite or beyond the maximum queue wait is counted in
``otel_celery_metrics_dropped_total`` instead of recorded; the send itself still counts.

A send that raises (broker down) is not counted: Celery logs it ("Message Error") and
tries again at the next due time; the missing sends and the stale last-send time are
what an alert sees.

``celery worker -B`` runs beat in a child process of the worker, whose measurements no
reader collects: there the first send logs one ERROR (run ``celery beat`` on its own, as
Celery recommends for production) instead of counting nothing silently.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core import values
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.recorder import Recorder
from otel_celery_metrics.worker.outcomes import refusal_log
from otel_celery_metrics.worker.patching import Wrapping

_logger = logging.getLogger(__name__)
_SENDS = mt.METRIC_INDEX[mt.BEAT_SENDS.name]
_LATENESS = mt.METRIC_INDEX[mt.BEAT_LATENESS.name]
_LAST_SEND = mt.METRIC_INDEX[mt.BEAT_LAST_SEND.name]


def lateness(entry: Any, bounds: values.Bounds) -> float | values.Refusal | None:
    """Seconds ``entry``'s due run is behind its scheduled time (>= 0), None if its
    schedule cannot say, or why the number it gave is refused."""
    estimate = getattr(entry.schedule, "remaining_estimate", None)
    if estimate is None:
        return None
    remaining = estimate(entry.last_run_at)
    seconds = getattr(remaining, "total_seconds", None)
    raw = seconds() if callable(seconds) else remaining
    number = values.finite(raw)
    return values.lateness(-number if number is not None else raw, bounds)


class BeatHooks:
    """Counts beat's sends through ``recorder``; ``clock`` gives wall-clock seconds."""

    def __init__(
        self,
        recorder: Recorder,
        failures: FailureLog,
        clock: Callable[[], float] = time.time,
        bounds: values.Bounds | None = None,
    ) -> None:
        self._recorder = recorder
        self._bounds = bounds or values.Bounds()
        self._refusals = refusal_log(recorder, _logger)
        self._failures = failures
        self._clock = clock
        self._wrapping = Wrapping("celery.beat.Scheduler.apply_async")
        self._pid = os.getpid()
        self._warned = False

    def install(self) -> None:
        from celery.beat import Scheduler

        hooks = self
        wrapping = self._wrapping

        def make(original: Callable[..., Any]) -> Callable[..., Any]:
            def apply_async(scheduler: Any, entry: Any, *args: Any, **kwargs: Any) -> Any:
                if not wrapping.active:
                    return original(scheduler, entry, *args, **kwargs)
                late = hooks._lateness(entry)
                result = original(scheduler, entry, *args, **kwargs)
                hooks.sent(entry, late)
                return result

            return apply_async

        wrapping.install(Scheduler, "apply_async", make)

    def uninstall(self) -> None:
        self._wrapping.restore()

    def _lateness(self, entry: Any) -> float | values.Refusal | None:
        try:
            return lateness(entry, self._bounds)
        except Exception as exc:  # noqa: BLE001 - metrics never stop beat
            self._failures.record("measuring a beat entry's lateness", exc)
            return None

    def sent(self, entry: Any, late: float | values.Refusal | None) -> None:
        """One send of ``entry`` went out, ``late`` seconds behind its scheduled time."""
        if os.getpid() != self._pid:
            if not self._warned:
                self._warned = True
                _logger.error(
                    "otel-celery-metrics: celery beat runs in a child process of the worker "
                    "(celery worker -B): its sends are not counted; run celery beat as its "
                    "own process to get celery_beat_* metrics",
                )
            return
        try:
            attrs = (str(entry.name), str(entry.task))
            self._recorder.emit(_SENDS, 1, attrs)
            self._recorder.emit(_LAST_SEND, self._clock(), attrs)
            if isinstance(late, values.Refusal):
                self._refusals.refused(late, attrs[1], f"lateness of beat entry {attrs[0][:100]!r}")
            elif late is not None:
                self._recorder.emit(_LATENESS, late, attrs)
        except Exception as exc:  # noqa: BLE001 - metrics never stop beat
            self._failures.record("counting a beat send", exc)
