"""Saturation and stuck tasks, read from Celery's own worker state at collection time.

``celery.worker.state`` tracks, in the worker's main process, every request reserved
(received and waiting for a pool process) and every request accepted by a pool process;
the consumer's timer holds the requests waiting for their ETA or countdown; the worker
controller knows its pool and autoscaler. Reading them when a scrape or export collects
costs nothing per task and is exact for every pool: under prefork the main process learns
of acceptance from the children, so no measurement has to cross processes.

:class:`WorkerView` learns the worker controller from Celery's ``worker_init`` signal
(main process, before the pool starts); until then, and outside a worker, the pool
metrics report nothing and the task metrics what ``celery.worker.state`` holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from otel_celery_metrics.core.routing import delivered_queue
from otel_celery_metrics.recording.admission import AttrValues

Observed = Iterable[tuple[float, AttrValues]]


def _task_name(request: Any) -> str:
    # The registered task's name, as every other metric: ``request.name`` is the
    # message's shadow name when it has one (chosen per message, unbounded).
    return str(request.task.name)


class WorkerView:
    """The observers of the worker-state metrics (see the module docstring).

    ``clock`` is wall-clock seconds (Celery stores a request's start as ``time.time()``).
    """

    def __init__(self, default_queue: str, clock: Callable[[], float] = time.time) -> None:
        self._default_queue = default_queue
        self._clock = clock
        self._worker: Callable[[], Any] = lambda: None
        self._uid = f"otel_celery_metrics.worker_view.{id(self)}"

    # -- wiring ----------------------------------------------------------------------------

    def install(self) -> None:
        from celery import signals

        signals.worker_init.connect(self._on_worker_init, weak=False, dispatch_uid=self._uid)

    def uninstall(self) -> None:
        from celery import signals

        signals.worker_init.disconnect(dispatch_uid=self._uid)
        self._worker = lambda: None

    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        if sender is not None:
            # The worker controller lives as long as the process; uninstall() lets go.
            self._worker = lambda: sender

    def _key(self, request: Any) -> AttrValues:
        return _task_name(request), delivered_queue(request.delivery_info, self._default_queue)

    # -- task observers ----------------------------------------------------------------------

    def executing(self) -> Iterator[tuple[float, AttrValues]]:
        """One (1, (task name, queue)) per task executing now."""
        from celery.worker import state

        for request in list(state.active_requests):
            yield 1.0, self._key(request)

    def reserved(self) -> Iterator[tuple[float, AttrValues]]:
        """One per task received and waiting for a free pool process (ETA reached or none)."""
        from celery.worker import state

        active = set(state.active_requests)
        for request in list(state.reserved_requests):
            if request not in active:
                yield 1.0, self._key(request)

    def scheduled(self) -> Iterator[tuple[float, AttrValues]]:
        """One per task the worker holds until its ETA or countdown (the consumer's timer)."""
        for request in self._timer_requests():
            yield 1.0, self._key(request)

    def prefetched(self) -> Iterator[tuple[float, AttrValues]]:
        """Every task the worker holds and has not started: reserved plus scheduled."""
        yield from self.reserved()
        yield from self.scheduled()

    def oldest_executing_age(self) -> Iterator[tuple[float, AttrValues]]:
        """Per (task name, queue), seconds since its longest-running execution started."""
        from celery.worker import state

        now = self._clock()
        oldest: dict[AttrValues, float] = {}
        for request in list(state.active_requests):
            started = request.time_start
            if started is None:  # accepted a moment ago; Celery sets it with the accept
                continue
            key = self._key(request)
            age = max(0.0, now - float(started))
            if age > oldest.get(key, -1.0):
                oldest[key] = age
        for key, age in oldest.items():
            yield age, key

    def past_soft_time_limit(self) -> Iterator[tuple[float, AttrValues]]:
        """One per executing task running longer than its soft time limit (where one is set:
        the message's, else the task's, else the worker's ``--soft-time-limit``)."""
        from celery.worker import state

        now = self._clock()
        worker = self._worker()
        worker_soft = getattr(worker, "soft_time_limit", None) if worker is not None else None
        for request in list(state.active_requests):
            started = request.time_start
            if started is None:
                continue
            soft = _soft_limit(request) or worker_soft
            if soft and now - float(started) > float(soft):
                yield 1.0, self._key(request)

    # -- pool observers ----------------------------------------------------------------------

    def pool_processes(self) -> Observed:
        """(processes the pool has now, ()) once the worker's pool exists."""
        pool = self._pool()
        if pool is None:
            return []
        return [(float(pool.num_processes), ())]

    def pool_max_processes(self) -> Observed:
        """(the most processes the pool may grow to: --autoscale's maximum, else its size)."""
        worker = self._worker()
        pool = self._pool()
        if worker is None or pool is None:
            return []
        autoscaler = getattr(worker, "autoscaler", None)
        if autoscaler is not None:
            return [(float(autoscaler.max_concurrency), ())]
        return [(float(pool.num_processes), ())]

    def queue_processes(self) -> Observed:
        """(pool processes, (queue,)) for every queue the worker consumes now: the same
        processes serve each of them, so each queue counts them all."""
        pool = self._pool()
        worker = self._worker()
        consumer = getattr(worker, "consumer", None) if worker is not None else None
        task_consumer = getattr(consumer, "task_consumer", None)
        if pool is None or task_consumer is None:
            return []
        size = float(pool.num_processes)
        names = {str(queue.name) for queue in list(getattr(task_consumer, "queues", ()))}
        return [(size, (name,)) for name in sorted(names)]

    def _pool(self) -> Any:
        worker = self._worker()
        pool = getattr(worker, "pool", None) if worker is not None else None
        # A prefork pool reports its size only once its processes are started.
        if pool is None or getattr(pool, "_pool", True) is None:
            return None
        return pool

    def _timer_requests(self) -> Iterator[Any]:
        from celery.worker.request import Request

        worker = self._worker()
        consumer = getattr(worker, "consumer", None) if worker is not None else None
        timer = getattr(consumer, "timer", None)
        if timer is None:
            return
        # What Celery's own `inspect scheduled` reads: an entry whose first argument is a
        # request is a task waiting for its ETA (or a rate limit's slot). `queue` is the
        # timer's pending entries for every pool: timer2's heap (prefork, solo, threads),
        # a set of greenlets carrying `.entry` (gevent), kombu's heap (eventlet).
        for waiting in list(timer.queue):
            args = getattr(getattr(waiting, "entry", None), "args", None)
            if args and isinstance(args[0], Request):
                yield args[0]


def _soft_limit(request: Any) -> float | None:
    limits = getattr(request, "time_limits", None) or (None, None)
    soft = limits[1] if len(limits) > 1 else None
    return soft or getattr(request.task, "soft_time_limit", None)
