"""The collection fence: no fork while a metric collection holds the SDK's locks.

Split from :mod:`otel_celery_metrics.pool.prefork`, whose fork bridge takes it around each
fork; the SDK adapter makes every reader's collection take it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

__all__ = ["CollectionFence"]


class CollectionFence:
    """Keeps a fork from happening while a metric collection is in progress.

    A collection (a scrape, a periodic OTLP export) holds the SDK's metric locks and ours
    while it runs in a reader's thread. ``os.fork`` copies those locks as they are; in the
    child, a lock copied while held is never released, so the first thing there that
    records a metric on a new series, or collects, waits forever. Seen here: a pool
    child's silenced reader thread stuck for good, and, with the SDK's own metrics on
    (``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``), the child's span processor stuck
    with it so none of that child's spans were ever exported. Collections take the fence
    (:meth:`collecting`); a fork waits for running ones to finish (at most ``max_wait``
    seconds: a collection stuck in a user's callback must not stall the pool) and keeps
    new ones out until it is done. A collection waits for a fork at most ``max_wait``
    seconds too; past that it collects anyway and ``on_wait_timeout`` counts the miss.
    """

    def __init__(
        self, max_wait: float = 2.0, on_wait_timeout: Callable[[str], None] | None = None
    ) -> None:
        self._max_wait = max_wait
        self._on_wait_timeout = on_wait_timeout
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._forking = False

    @contextlib.contextmanager
    def collecting(self) -> Iterator[None]:
        timed_out = False
        with self._cond:
            if self._forking:
                timed_out = not self._cond.wait_for(
                    lambda: not self._forking, timeout=self._max_wait
                )
            self._running += 1
        if timed_out and self._on_wait_timeout is not None:
            self._on_wait_timeout("waiting for a fork before a metric collection")
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                if not self._running:
                    self._cond.notify_all()

    @property
    def fork_waiting(self) -> bool:
        """Whether a fork is waiting for (or holding off) collections right now."""
        return self._forking

    def before_fork(self) -> bool:
        """Wait until no collection runs; False if one still did after ``max_wait``."""
        with self._cond:
            self._forking = True
            return self._cond.wait_for(lambda: self._running == 0, timeout=self._max_wait)

    def after_fork_in_parent(self) -> None:
        with self._cond:
            self._forking = False
            self._cond.notify_all()

    def after_fork_in_child(self) -> None:
        # Collections of the parent do not exist here; its condition's lock may have
        # been copied while held.
        self._cond = threading.Condition(threading.Lock())
        self._running = 0
        self._forking = False
