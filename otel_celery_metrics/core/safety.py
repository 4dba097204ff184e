"""Failure containment: metrics code must never raise into a task, and must not flood logs.

Every receiver and background loop catches its own exceptions and hands them to
:class:`FailureLog`, which logs the first occurrence of each (place, exception class)
with a traceback and counts the rest silently. A broken receiver that fires on every
task therefore costs one log line, not one per task.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

_logger = logging.getLogger(__name__)


class FailureLog:
    """Logs each distinct (where, exception class) once and counts every occurrence."""

    def __init__(
        self, logger: logging.Logger = _logger, on_failure: Callable[[int], None] | None = None
    ) -> None:
        self._logger = logger
        self._seen: set[tuple[str, type[BaseException]]] = set()
        self._lock = threading.Lock()
        self.count = 0
        #: Called with the number of failures each time one happens (a self-metric hook).
        self.on_failure = on_failure

    def reinit_locks(self) -> None:
        """A new lock, in a forked child (see ``Recorder.reinit_locks``)."""
        self._lock = threading.Lock()

    def record(self, where: str, exc: BaseException) -> None:
        self.count += 1
        key = (where, type(exc))
        with self._lock:
            first = key not in self._seen
            if first:
                self._seen.add(key)
        if first:
            self._logger.error(
                "otel-celery-metrics: %s failed (%s: %s); the task is unaffected and this "
                "error is logged once, later occurrences are only counted",
                where, type(exc).__name__, exc, exc_info=exc,
            )
        hook = self.on_failure
        if hook is not None:
            # The hook is itself metrics code; its failure must not escape either.
            with contextlib.suppress(Exception):
                hook(1)
