"""Workers as the exporter sees them: heartbeats, timeouts, forgetting, events disabled.

A worker is up while its heartbeats (``worker-heartbeat``/``worker-online``) arrive
within ``timeout`` seconds of each other, by the exporter's own clock at receipt (worker
clocks drift; the receipt time does not). ``worker-offline`` sets it to 0 at once; a
killed worker sends nothing and goes to 0 when the timeout passes. Either way its series
stay, reading 0, until ``forget_after`` seconds without a heartbeat: then they are
removed, so memory stays flat however many hostnames come and go. Workers are keyed by
their full node name (``celery@host``), so two nodes on one host stay two workers.

Events-disabled detection: a worker's heartbeat carries ``processed``, the tasks it has
run. When that grows and no task event from the worker arrived in the window, task
events are off on that worker (it was started without ``-E``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from otel_celery_metrics.core.routing import Binding
from otel_celery_metrics.exporter.store import Caps

_logger = logging.getLogger(__name__)


class WorkerInfo:
    __slots__ = (
        "active",
        "hostname",
        "last_seen",
        "last_task_event",
        "missing_since",
        "online",
        "processed",
        "processed_marker",
        "processes",
        "queues",
    )

    def __init__(self, hostname: str, now: float) -> None:
        self.hostname = hostname
        self.last_seen = now
        self.online = True
        self.active = 0
        self.processed: int | None = None
        self.processed_marker: int | None = None
        self.last_task_event: float | None = None
        self.missing_since: float | None = None
        self.processes: int | None = None
        self.queues: tuple[str, ...] = ()


class Liveness:
    def __init__(
        self,
        *,
        timeout: float,
        forget_after: float,
        events_missing_after: float,
        caps: Caps,
        clock: Callable[[], float],
    ) -> None:
        self._timeout = timeout
        self._forget_after = max(forget_after, timeout)
        self._missing_after = events_missing_after
        self._caps = caps
        self._clock = clock
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerInfo] = {}
        self._warned_missing: set[str] = set()
        #: Workers forgotten so far; the instruments rebuild their observable state
        #: when many went, so the SDK's per-metric memory stays flat too.
        self.forgotten_total = 0
        #: Queue -> its bindings, from the last inspect reply (what task-sent events are
        #: checked against: :func:`otel_celery_metrics.core.routing.sent_destination`).
        self.bindings: Mapping[str, tuple[Binding, ...]] = {}

    # -- events ----------------------------------------------------------------------------

    def heartbeat(self, hostname: str, active: int | None, processed: int | None) -> None:
        now = self._clock()
        with self._lock:
            info = self._workers.get(hostname)
            if info is None:
                if self._caps.admit("worker", hostname) != hostname:
                    return
                info = self._workers[hostname] = WorkerInfo(hostname, now)
                _logger.info("worker %s is up", hostname)
            elif not info.online or now - info.last_seen > self._timeout:
                _logger.info("worker %s is up again", hostname)
            info.last_seen = now
            info.online = True
            if active is not None:
                info.active = active
            if processed is not None:
                self._check_task_events(info, processed, now)

    def _check_task_events(self, info: WorkerInfo, processed: int, now: float) -> None:
        info.processed = processed
        if info.processed_marker is None or processed < info.processed_marker:
            info.processed_marker = processed  # first heartbeat, or the worker restarted
            return
        if processed == info.processed_marker:
            return
        recent = info.last_task_event is not None and now - info.last_task_event <= max(
            self._missing_after, self._timeout
        )
        if recent:
            info.processed_marker = processed
            info.missing_since = None
        elif info.missing_since is None:
            info.missing_since = now

    def offline(self, hostname: str) -> None:
        with self._lock:
            info = self._workers.get(hostname)
            if info is not None:
                info.online = False
                info.active = 0
                _logger.info("worker %s went offline", hostname)

    def task_event(self, hostname: str) -> None:
        """A task event from ``hostname`` arrived (hot path: no lock, benign races)."""
        info = self._workers.get(hostname)
        if info is not None:
            info.last_task_event = self._clock()
            if info.missing_since is not None:
                info.missing_since = None
                info.processed_marker = info.processed

    def update_from_inspect(
        self,
        processes: dict[str, int],
        queues: dict[str, tuple[str, ...]],
        bindings: Mapping[str, tuple[Binding, ...]] | None = None,
    ) -> None:
        """``bindings``: queue -> its bindings, for telling a task-sent's destination."""
        if bindings:
            # Replaced whole (readers take the reference without the lock): the queues
            # the workers that answered consume now.
            self.bindings = dict(bindings)
        with self._lock:
            for hostname, info in self._workers.items():
                if hostname in processes:
                    info.processes = processes[hostname]
                if hostname in queues:
                    info.queues = queues[hostname]

    # -- time ------------------------------------------------------------------------------

    def expire(self) -> list[str]:
        """Forget workers silent past ``forget_after``; returns their hostnames."""
        now = self._clock()
        gone: list[str] = []
        with self._lock:
            for hostname, info in list(self._workers.items()):
                if now - info.last_seen > self._forget_after:
                    del self._workers[hostname]
                    self._caps.forget("worker", hostname)
                    self._warned_missing.discard(hostname)
                    gone.append(hostname)
        self.forgotten_total += len(gone)
        for hostname in gone:
            _logger.info(
                "worker %s forgotten (no heartbeat for %.0fs)", hostname, self._forget_after
            )
        return gone

    def _up(self, info: WorkerInfo, now: float) -> bool:
        return info.online and now - info.last_seen <= self._timeout

    # -- reads (scrape side) ---------------------------------------------------------------

    def up(self) -> dict[str, int]:
        now = self._clock()
        with self._lock:
            return {h: int(self._up(i, now)) for h, i in self._workers.items()}

    def active(self) -> dict[str, int]:
        now = self._clock()
        with self._lock:
            return {h: i.active if self._up(i, now) else 0 for h, i in self._workers.items()}

    def processes(self) -> dict[str, int]:
        now = self._clock()
        with self._lock:
            return {
                h: (i.processes or 0) if self._up(i, now) else 0
                for h, i in self._workers.items()
                if i.processes is not None
            }

    def per_queue(self) -> dict[str, tuple[int, int]]:
        """queue -> (live workers consuming it, their pool processes)."""
        now = self._clock()
        out: dict[str, tuple[int, int]] = {}
        with self._lock:
            for info in self._workers.values():
                alive = self._up(info, now)
                for queue in info.queues:
                    workers, procs = out.get(queue, (0, 0))
                    if alive:
                        workers += 1
                        procs += info.processes or 0
                    out[queue] = (workers, procs)
        return out

    def queues(self) -> set[str]:
        with self._lock:
            return {q for info in self._workers.values() for q in info.queues}

    def consumes_several(self, hostname: str) -> bool:
        """Whether the worker is known (from inspect) to consume more than one queue."""
        info = self._workers.get(hostname)
        return info is not None and len(info.queues) > 1

    def sole_queue(self, hostname: str) -> str | None:
        info = self._workers.get(hostname)
        if info is not None and len(info.queues) == 1:
            return info.queues[0]
        return None

    def without_task_events(self) -> list[str]:
        """Live workers that run tasks but whose task events do not arrive."""
        now = self._clock()
        with self._lock:
            found = sorted(
                h
                for h, i in self._workers.items()
                if self._up(i, now)
                and i.missing_since is not None
                and now - i.missing_since >= self._missing_after
            )
            new = [h for h in found if h not in self._warned_missing]
            self._warned_missing.intersection_update(found)
            self._warned_missing.update(found)
        for hostname in new:
            _logger.warning(
                "worker %s is processing tasks but sends no task events: task events are "
                "disabled there. Start it with -E (worker_send_task_events=True) or run "
                "the exporter with --enable-events",
                hostname,
            )
        return found

    def __len__(self) -> int:
        return len(self._workers)
