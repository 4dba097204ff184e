"""Celery events -> counters and histograms, dispatched by a table of event types.

Every event goes through :meth:`EventHandlers.handle`, which never raises: an event with
a missing field, a wrong type, or a name that is huge, not valid UTF-8, or holds control
characters (newlines) is counted in ``celery_exporter_events_dropped_total`` with a reason
and otherwise ignored, so the exposition stays valid whatever arrives on the bus.
Quotes and backslashes are fine in names: the exposition escapes them.

Every number an event carries (timestamps, runtime, ETA, a worker's counts) passes through
:mod:`otel_celery_metrics.core.values`, as the in-process instrumentor's do: one that is
not a finite number, or a queue wait or runtime beyond its bound (a worker whose clock is
wrong), is counted in ``celery_exporter_measurements_dropped_total`` with a reason and
treated as absent; the event itself is still counted. Runtimes come from one host's clock
(the worker's ``runtime``, or its task-started and task-failed timestamps), never from
the worker's and ours mixed.

Task events after task-sent/task-received carry only the task id; names and queues come
from :class:`~.tracker.TaskTracker`. A task whose earlier events we never saw (exporter
started mid-stream) is counted under the task name ``unknown``.

Over 400 lines on purpose: one handler per event type, in one table a reader scans top to
bottom; the per-task state they share lives in :mod:`.tracker` and :mod:`.held`.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core import values
from otel_celery_metrics.core.queue_wait import wait_reference
from otel_celery_metrics.core.routing import sent_destination
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.exporter.config import ExporterConfig, NameFilter
from otel_celery_metrics.exporter.held import HeldEvents
from otel_celery_metrics.exporter.liveness import Liveness
from otel_celery_metrics.exporter.store import Caps, CounterStore, Key
from otel_celery_metrics.exporter.tracker import TaskInfo, TaskTracker

_logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 256
#: Seconds a started task's queue wait waits for a task-sent that is late (see _started).
SENT_EVENT_GRACE = 2.0
#: Started tasks waiting for their task-sent at most; past it the oldest settle at once.
MAX_AWAITING_SENT = 100_000
UNKNOWN = "unknown"
# Control characters (newlines, NUL, escapes) and lone surrogates (what JSON's \udcxx or
# a non-UTF-8 decode leaves behind): neither belongs in a label value.
_BAD_CHARS = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
_EXCEPTION_CLASS = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\(")

TASK_EVENTS = (
    "task-sent", "task-received", "task-started", "task-succeeded", "task-failed",
    "task-retried", "task-rejected", "task-revoked",
)
WORKER_EVENTS = ("worker-online", "worker-heartbeat", "worker-offline")
#: Types known to Celery that carry nothing we measure; counted as received only.
IGNORED_EVENTS = ("task-cancelled",)
KNOWN_TYPES = frozenset(TASK_EVENTS + WORKER_EVENTS + IGNORED_EVENTS)
#: Events a worker sends about a task; they carry no queue (see held.py).
_HELD_KINDS = frozenset(TASK_EVENTS) - {"task-sent"}
OTHER_TYPE = "other"
#: How each queue-wait reference is named in a refusal's log line.
_REFERENCE_NAMES = {"publish": "task-sent timestamp", "received": "task-received timestamp",
                    "eta": "ETA"}


class InvalidEvent(ValueError):
    """An event field is missing or unusable; the event is dropped."""


class HistogramSink(Protocol):
    def runtime(
        self, name: str, queue: str, state: str, hostname: str, seconds: float
    ) -> None: ...

    def queue_wait(self, name: str, queue: str, wait_from: str, seconds: float) -> None: ...


# Names already checked. Task names and hostnames repeat on every event, so the regex
# runs once per distinct name; bounded so a flood of distinct names cannot grow it.
_checked: set[str] = set()
_CHECKED_LIMIT = 20_000


def label(event: Mapping[str, Any], key: str) -> str:
    """A string field fit to be a label value, or :class:`InvalidEvent`."""
    value = event.get(key)
    if not isinstance(value, str):
        raise InvalidEvent(key)
    if value in _checked:
        return value
    if not value or len(value) > MAX_NAME_LENGTH or _BAD_CHARS.search(value):
        raise InvalidEvent(key)
    if len(_checked) < _CHECKED_LIMIT:
        _checked.add(value)
    return value


def event_task_id(event: Mapping[str, Any]) -> str:
    """The task id: only a dict key, never a label, so any short string will do."""
    value = event.get("uuid")
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_LENGTH:
        raise InvalidEvent("uuid")
    return value


def exception_class(text: object) -> str:
    """``"ValueError('boom')"`` -> ``"ValueError"``; never the message (unbounded)."""
    if isinstance(text, str):
        match = _EXCEPTION_CLASS.match(text)
        if match and len(match.group(1)) <= MAX_NAME_LENGTH:
            return match.group(1).rsplit(".", 1)[-1]
    return UNKNOWN


class EventHandlers:
    """Turns one event dict at a time into measurements."""

    def __init__(
        self,
        config: ExporterConfig,
        *,
        counters: CounterStore,
        caps: Caps,
        tracker: TaskTracker,
        liveness: Liveness,
        histograms: HistogramSink,
        clock: Callable[[], float],
        failures: FailureLog | None = None,
    ) -> None:
        self._config = config
        self._caps = caps
        self._tracker = tracker
        self._liveness = liveness
        self._hist = histograms
        self._clock = clock
        self._failures = failures or FailureLog(_logger)
        self._task_filter = NameFilter(config.task_allow, config.task_deny)
        self._queue_filter = NameFilter(config.queue_allow, config.queue_deny)
        self._per_host = config.task_hostname_label or config.danihodovic_names
        self._compat = config.danihodovic_names
        self._received = counters.counter(mt.EXPORTER_EVENTS_RECEIVED.name)
        self._dropped = counters.counter(mt.EXPORTER_EVENTS_DROPPED.name)
        self._bounds = config.bounds
        refused = counters.counter(mt.EXPORTER_MEASUREMENTS_DROPPED.name)
        for reason in values.REASONS:
            refused.add((reason,), 0)  # from 0, so increase() alerts see the first
        self._refusals = values.RefusalLog(
            lambda reason: refused.add((reason,)), _logger,
            mt.EXPORTER_MEASUREMENTS_DROPPED.prometheus_name + '{{reason="{reason}"}}',
        )
        self._per_event = {
            "task-sent": counters.counter(mt.EVENTS_TASK_SENT.name),
            "task-received": counters.counter(mt.EVENTS_TASK_RECEIVED.name),
            "task-started": counters.counter(mt.EVENTS_TASK_STARTED.name),
            "task-succeeded": counters.counter(mt.EVENTS_TASK_SUCCEEDED.name),
            "task-failed": counters.counter(mt.EVENTS_TASK_FAILED.name),
            "task-retried": counters.counter(mt.EVENTS_TASK_RETRIED.name),
            "task-rejected": counters.counter(mt.EVENTS_TASK_REJECTED.name),
            "task-revoked": counters.counter(mt.EVENTS_TASK_REVOKED.name),
        }
        self._tasks = counters.counter(mt.TASKS.name)
        self._failures_by_class = counters.counter(mt.TASK_FAILURES.name)
        self._published = counters.counter(mt.TASKS_PUBLISHED.name)
        self._worker_received = counters.counter(mt.TASKS_RECEIVED.name)
        #: (task name, queue) -> tasks executing now (started, not yet finished).
        self.executing: dict[Key, int] = {}
        #: Wall-clock time of the last event handled (None before the first).
        self.last_event_at: float | None = None
        #: Started tasks whose task-sent has not arrived yet, oldest first, with the time
        #: after which their queue wait settles for the receipt time.
        self._awaiting_sent: deque[tuple[float, TaskInfo]] = deque()
        #: Worker events waiting for their task's task-sent to name the queue.
        self._held = HeldEvents(SENT_EVENT_GRACE, MAX_AWAITING_SENT, clock)
        self._table: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "task-sent": self._sent,
            "task-received": self._task_received,
            "task-started": self._started,
            "task-succeeded": self._succeeded,
            "task-failed": self._failed,
            "task-retried": self._finished_as("RETRY"),
            "task-rejected": self._finished_as("REJECTED"),
            "task-revoked": self._finished_as("REVOKED"),
            "worker-online": self._heartbeat,
            "worker-heartbeat": self._heartbeat,
            "worker-offline": self._offline,
            "task-cancelled": _ignore,
        }

    # -- entry points ----------------------------------------------------------------------

    def handle(self, event: object) -> None:
        """Handle one decoded event. Never raises."""
        now = self.last_event_at = self._clock()
        if self._awaiting_sent and self._awaiting_sent[0][0] <= now:
            # Any event will do as the clock tick: workers send heartbeats every 2 s.
            try:
                self._settle_overdue_waits(now)
            except Exception as exc:  # noqa: BLE001
                self._failures.record("settling queue waits", exc)
        if self._held.due(now):
            for held in self._held.overdue(now):
                self._replay(held)
        if not isinstance(event, dict):
            self.drop(OTHER_TYPE, "invalid_field")
            return
        kind = event.get("type")
        handler = self._table.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.drop(OTHER_TYPE, "unknown_type")
            return
        assert isinstance(kind, str)
        self._received.add((kind,))
        if kind in _HELD_KINDS and self._hold(event):
            return
        self._dispatch(kind, handler, event)

    def _dispatch(
        self, kind: str, handler: Callable[[Mapping[str, Any]], None], event: Mapping[str, Any]
    ) -> None:
        try:
            handler(event)
        except InvalidEvent:
            self.drop(kind, "invalid_field")
        except _Filtered:
            self.drop(kind, "filtered")
        except Exception as exc:  # noqa: BLE001 - one bad event must not stop the stream
            self.drop(kind, "internal_error")
            self._failures.record(f"handling a {kind} event", exc)

    def _hold(self, event: Mapping[str, Any]) -> bool:
        """Hold a worker event of a task whose queue only its (late) task-sent can name:
        the worker consumes several queues and the task-sent has not arrived."""
        task_id = event.get("uuid")
        if not isinstance(task_id, str):
            return False
        if not self._held.holding(task_id):
            info = self._tracker.get(task_id)
            if info is not None and info.sent is not None:
                return False
            hostname = event.get("hostname")
            if not isinstance(hostname, str) or not self._liveness.consumes_several(hostname):
                return False
        for released in self._held.hold(task_id, event):
            self._replay(released)
        return True

    def _replay(self, events: list[Mapping[str, Any]]) -> None:
        for event in events:
            kind = event["type"]
            self._dispatch(kind, self._table[kind], event)

    def forget_worker(self, hostname: str) -> None:
        """Remove a forgotten worker's series from the hostname-labelled task counters."""
        if self._per_host:
            for counter in self._per_event.values():
                counter.forget_where(2, hostname)

    def drop(self, kind: str, reason: str, amount: int = 1) -> None:
        self._dropped.add((kind if kind in KNOWN_TYPES else OTHER_TYPE, reason), amount)

    # -- helpers ---------------------------------------------------------------------------

    def _checked(
        self, checked: float | values.Refusal | None, task_name: str, what: str
    ) -> float | None:
        """A value :mod:`.core.values` checked; a refusal is counted (once per value)."""
        if isinstance(checked, values.Refusal):
            self._refusals.refused(checked, task_name, what)
            return None
        return checked

    def _time(self, event: Mapping[str, Any], key: str, task_name: str) -> float | None:
        return self._checked(values.timestamp(event.get(key)), task_name, f"{key} field")

    def _eta(self, event: Mapping[str, Any], task_name: str) -> float | None:
        return self._checked(values.eta(event.get("eta")), task_name, "eta field")

    def _names(self, info: TaskInfo) -> tuple[str, str]:
        """(task name, queue) after filters and caps; raises :class:`_Filtered`."""
        if not self._task_filter(info.name):
            raise _Filtered
        queue = info.queue or self._config.default_queue
        if not self._queue_filter(queue):
            raise _Filtered
        return self._caps.admit("task_name", info.name), self._caps.admit("queue", queue)

    def _key(self, name: str, queue: str, hostname: str) -> Key:
        if self._per_host:
            return (name, queue, self._caps.admit("worker", hostname))
        return (name, queue)

    def _info(self, event: Mapping[str, Any]) -> tuple[str, TaskInfo]:
        task_id = event_task_id(event)
        info = self._tracker.get(task_id)
        if info is None:
            info = self._tracker.remember(task_id, TaskInfo(UNKNOWN, None))
        return task_id, info

    def _worker_host(self, event: Mapping[str, Any]) -> str:
        hostname = label(event, "hostname")
        self._liveness.task_event(hostname)
        return hostname

    # -- task events -----------------------------------------------------------------------

    def _sent(self, event: Mapping[str, Any]) -> None:
        task_id = event_task_id(event)
        name = label(event, "name")
        # Never the routing key: with a topic, fanout or headers exchange it is whatever
        # the producer chose (a user id, say), not a queue.
        resolved = label(event, "queue") if event.get("queue") else None
        queue = sent_destination(
            resolved, event.get("exchange"), event.get("routing_key"), self._liveness.bindings
        )
        hostname = label(event, "hostname") if self._per_host else ""
        info = self._tracker.get(task_id)
        if info is None:
            info = self._tracker.remember(task_id, TaskInfo(name, queue))
        else:
            # A retry publishes the same id again; keep what its first run started.
            info.name, info.queue = name, queue
        info.sent = self._time(event, "timestamp", name)
        info.eta = self._eta(event, name)
        name, queue = self._names(info)
        self._per_event["task-sent"].add(self._key(name, queue, hostname))
        self._published.add((name, queue))
        if info.wait_start is not None:
            self._settle_wait(info)  # it started before this task-sent arrived (_started)
        self._replay(self._held.release(task_id))  # worker events that waited for it

    def _task_received(self, event: Mapping[str, Any]) -> None:
        task_id = event_task_id(event)
        hostname = self._worker_host(event)
        info = self._tracker.get(task_id)
        name = label(event, "name")
        if info is None or info.name != name:
            queue = info.queue if info is not None else None
            info = self._tracker.remember(task_id, TaskInfo(name, queue))
        # A worker consuming one queue took the message from it, whatever task-sent said.
        sole = self._liveness.sole_queue(hostname)
        if sole is not None:
            info.queue = sole
        info.received = self._time(event, "timestamp", name)
        eta = self._eta(event, name)
        if eta is not None:
            info.eta = eta
        info.hostname = hostname
        name, queue = self._names(info)
        self._per_event["task-received"].add(self._key(name, queue, hostname))
        self._worker_received.add((name, queue))

    def _started(self, event: Mapping[str, Any]) -> None:
        _, info = self._info(event)
        hostname = self._worker_host(event)
        started = self._time(event, "timestamp", info.name)
        name, queue = self._names(info)
        self._per_event["task-started"].add(self._key(name, queue, hostname))
        if not info.executing:
            info.executing = True
            key = (name, queue)
            self.executing[key] = self.executing.get(key, 0) + 1
        info.started = started
        if started is None:
            return
        if info.sent is None:
            # No task-sent yet. If its producer sends them, this one is late: the producer
            # publishes it after the task message, on another connection, so a busy bus
            # often delivers the worker's task-started (even its end) first. Wait a little
            # for it rather than settle for the receipt time at once. (Producers that send
            # none, Celery's default, only see their receipt-based waits a little later.)
            info.wait_start = started
            self._awaiting_sent.append((self._clock() + SENT_EVENT_GRACE, info))
            if len(self._awaiting_sent) > MAX_AWAITING_SENT:
                self._settle_wait(self._awaiting_sent.popleft()[1])
            return
        self._queue_wait(info, name, queue, started)

    def _queue_wait(self, info: TaskInfo, name: str, queue: str, started: float) -> None:
        # The rule both ways in share (core.queue_wait): publish, else receipt, unless the
        # ETA is later. Producer and worker clocks disagree by small amounts (clamped at
        # 0), sometimes by more (refused and counted): core.values.queue_wait.
        reference, wait_from = wait_reference(info.sent, info.received, info.eta)
        if reference is None:
            return
        seconds = values.queue_wait(started, reference, self._bounds, _REFERENCE_NAMES[wait_from])
        if isinstance(seconds, values.Refusal):
            self._refusals.refused(seconds, info.name, "queue wait")
            return
        self._hist.queue_wait(name, queue, wait_from, seconds)

    def _settle_wait(self, info: TaskInfo) -> None:
        """Record a waiting queue wait with what is known now: from publish once the late
        task-sent came, from receipt when the grace ran out without it."""
        started, info.wait_start = info.wait_start, None
        if started is None:
            return  # already settled (its task-sent came)
        try:
            name, queue = self._names(info)
        except _Filtered:
            return
        self._queue_wait(info, name, queue, started)

    def _settle_overdue_waits(self, now: float) -> None:
        waiting = self._awaiting_sent
        while waiting and waiting[0][0] <= now:
            self._settle_wait(waiting.popleft()[1])

    def _end(self, info: TaskInfo, name: str, queue: str) -> None:
        # A retried task comes back under its id: its next run starts afresh.
        info.started = None
        if info.executing:
            info.executing = False
            key = (name, queue)
            left = self.executing.get(key, 0) - 1
            if left > 0:
                self.executing[key] = left
            else:
                # Keep the series (reads 0) rather than let it vanish mid-dashboard.
                self.executing[key] = 0

    def _succeeded(self, event: Mapping[str, Any]) -> None:
        task_id, info = self._info(event)
        hostname = self._worker_host(event)
        raw = event.get("runtime")
        name, queue = self._names(info)
        self._end(info, name, queue)
        self._tracker.forget(task_id)
        self._per_event["task-succeeded"].add(self._key(name, queue, hostname))
        self._tasks.add((name, queue, "SUCCESS"))
        if raw is not None:
            runtime = self._checked(values.runtime(raw, self._bounds), info.name, "runtime")
            if runtime is not None:
                self._hist.runtime(name, queue, "SUCCESS", hostname, runtime)

    def _failed(self, event: Mapping[str, Any]) -> None:
        task_id, info = self._info(event)
        hostname = self._worker_host(event)
        finished = self._time(event, "timestamp", info.name)
        exc = exception_class(event.get("exception"))
        name, queue = self._names(info)
        started = info.started
        self._end(info, name, queue)
        self._tracker.forget(task_id)
        key = self._key(name, queue, hostname)
        self._per_event["task-failed"].add((*key, exc) if self._compat else key)
        self._tasks.add((name, queue, "FAILURE"))
        self._failures_by_class.add((name, queue, exc))
        if started is not None and finished is not None:
            # Both from the worker's clock; a negative span means it stepped back.
            runtime = self._checked(
                values.elapsed(started, finished, self._bounds), info.name, "runtime"
            )
            if runtime is not None:
                self._hist.runtime(name, queue, "FAILURE", hostname, runtime)

    def _finished_as(self, state: str) -> Callable[[Mapping[str, Any]], None]:
        kind = {"RETRY": "task-retried", "REJECTED": "task-rejected", "REVOKED": "task-revoked"}
        counter = self._per_event[kind[state]]

        def handler(event: Mapping[str, Any]) -> None:
            task_id, info = self._info(event)
            # Revocations broadcast by a client carry no worker hostname.
            raw_host = event.get("hostname")
            hostname = self._worker_host(event) if raw_host is not None else ""
            name, queue = self._names(info)
            self._end(info, name, queue)
            if state != "RETRY":  # a retried task comes back under the same id
                self._tracker.forget(task_id)
            counter.add(self._key(name, queue, hostname))
            self._tasks.add((name, queue, state))

        return handler

    # -- worker events ---------------------------------------------------------------------

    def _heartbeat(self, event: Mapping[str, Any]) -> None:
        hostname = label(event, "hostname")
        active = self._count(event, "active", hostname)
        processed = self._count(event, "processed", hostname)
        self._liveness.heartbeat(hostname, active, processed)

    def _count(self, event: Mapping[str, Any], key: str, hostname: str) -> int | None:
        checked = values.count(event.get(key))
        if isinstance(checked, values.Refusal):
            self._refusals.refused(checked, hostname, f"{key} field", of="worker")
            return None
        return checked

    def _offline(self, event: Mapping[str, Any]) -> None:
        self._liveness.offline(label(event, "hostname"))


class _Filtered(Exception):
    """The task name or queue is excluded by an allow/deny list."""


def _ignore(_event: Mapping[str, Any]) -> None:
    return None
