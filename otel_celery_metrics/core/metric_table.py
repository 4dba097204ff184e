"""The one table of metrics: names, instrument kinds, units, descriptions, attributes, buckets.

Instruments (:mod:`otel_celery_metrics.recording.recorder`), the standalone exporter,
``docs/metrics.md`` and the tests all come from :data:`METRICS`. Specs only: the reference
document, and the prose on where each attribute's values come from, belong to the docs
generator (``docs/metrics_reference.py``). Change a metric here and the reference test
tells you to regenerate (``python docs/metrics_reference.py > docs/metrics.md``).

Over 400 lines on purpose: it is one table, read top to bottom, and splitting it would
make two places to look for a metric.

Names are OpenTelemetry names; :func:`prometheus_name` gives the series name the
OpenTelemetry Prometheus exporter (and the Collector's ``prometheus`` exporter) produce:
dots become underscores, the UCUM unit becomes a suffix (``s`` -> ``_seconds``, curly
annotations such as ``{task}`` add nothing) and monotonic counters end in ``_total``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from otel_celery_metrics.core import values


class InstrumentKind(enum.Enum):
    """The OpenTelemetry instrument a metric is recorded with."""

    COUNTER = "Counter"
    HISTOGRAM = "Histogram"
    OBSERVABLE_UP_DOWN_COUNTER = "ObservableUpDownCounter"
    OBSERVABLE_GAUGE = "ObservableGauge"


# Task runtimes span four orders of magnitude: 10 ms callbacks next to 30 min reports.
# The seed guide's 0.1 .. 60 s buckets lump every fast task into one bucket and every
# long one into +Inf. This default keeps all eight of the seed's boundaries (so
# dashboards that select le="0.5" still work) and adds resolution at both ends.
DEFAULT_SECONDS_BUCKETS: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)

# Attribute keys. Every one is bounded: a task *name* (not id), a queue, a state out of
# Celery's fixed set, an exception *class* name, and where a queue-wait point was measured
# from. Never task ids, arguments, results, exception messages, routing keys or producer
# hostnames. docs/metrics_reference.py says where each value comes from and what bounds it.
TASK_NAME = "task_name"
QUEUE = "queue"
STATE = "state"
EXCEPTION_TYPE = "exception_type"
WAIT_FROM = "wait_from"
REASON = "reason"
ATTRIBUTE = "attribute"
SIGNAL = "signal"
HOOK = "hook"
SCHEDULE_ENTRY = "schedule_entry"
# Exporter only.
HOSTNAME = "hostname"
EVENT_TYPE = "type"
PROBE = "probe"

#: Attribute keys users may narrow the set to (``OTEL_CELERY_METRICS_ATTRIBUTES``).
NARROWABLE_ATTRIBUTES: tuple[str, ...] = (TASK_NAME, QUEUE, STATE, EXCEPTION_TYPE, WAIT_FROM)

#: Terminal states a task execution (or a message) can end in, as counted in
#: ``celery_tasks_total``. IGNORED comes from ``raise Ignore()``.
TERMINAL_STATES: tuple[str, ...] = (
    "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED", "IGNORED",
)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: everything needed to create its instrument and document it."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    attributes: tuple[str, ...]
    buckets: tuple[float, ...] | None = None
    #: Where it is measured: "worker" (in-process), "producer", "beat", "self" (our own
    #: health).
    recorded_in: str = "worker"

    @property
    def prometheus_name(self) -> str:
        return prometheus_name(self)


TASKS = MetricSpec(
    name="celery.tasks",
    kind=InstrumentKind.COUNTER,
    unit="{task}",
    description="Task executions and messages by terminal state "
    "(SUCCESS, FAILURE, RETRY, REVOKED, REJECTED, IGNORED).",
    attributes=(TASK_NAME, QUEUE, STATE),
)
TASK_RUNTIME = MetricSpec(
    name="celery.task.runtime",
    kind=InstrumentKind.HISTOGRAM,
    unit="s",
    description="Execution time of tasks that ran to an end (any outcome but a lost worker), "
    "by the state it ended in (state: SUCCESS, FAILURE, RETRY, ...): Celery's own runtime "
    "for successes (its 'succeeded in' figure); for other outcomes, from the pool process "
    "accepting the task to its result reaching the worker.",
    attributes=(TASK_NAME, QUEUE, STATE),
    buckets=DEFAULT_SECONDS_BUCKETS,
)
TASKS_PUBLISHED = MetricSpec(
    name="celery.tasks.published",
    kind=InstrumentKind.COUNTER,
    unit="{task}",
    description="Task messages published by instrumented producers (including retries).",
    attributes=(TASK_NAME, QUEUE),
    recorded_in="producer",
)
TASKS_RECEIVED = MetricSpec(
    name="celery.tasks.received",
    kind=InstrumentKind.COUNTER,
    unit="{task}",
    description="Task messages the worker took from the broker (unknown task names count as "
    "REJECTED instead). In-process this includes messages then discarded as revoked or "
    "expired; the standalone exporter counts task-received events, which Celery does not "
    "send for those.",
    attributes=(TASK_NAME, QUEUE),
)
TASK_QUEUE_WAIT = MetricSpec(
    name="celery.task.queue_wait",
    kind=InstrumentKind.HISTOGRAM,
    unit="s",
    description="Time from publish (or ETA/countdown, when later) to the start of execution; "
    "wait_from says which reference a point used: publish, eta, or received "
    "(producer not instrumented).",
    attributes=(TASK_NAME, QUEUE, WAIT_FROM),
    buckets=DEFAULT_SECONDS_BUCKETS,
)
TASKS_EXECUTING = MetricSpec(
    name="celery.tasks.executing",
    kind=InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER,
    unit="{task}",
    description="Tasks executing now on this worker (all pool processes).",
    attributes=(TASK_NAME, QUEUE),
)
TASKS_PREFETCHED = MetricSpec(
    name="celery.tasks.prefetched",
    kind=InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER,
    unit="{task}",
    description="Tasks this worker holds but has not started (prefetched): "
    "celery.tasks.reserved plus celery.tasks.scheduled.",
    attributes=(TASK_NAME, QUEUE),
)
TASKS_RESERVED = MetricSpec(
    name="celery.tasks.reserved",
    kind=InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER,
    unit="{task}",
    description="Prefetched tasks waiting for a free pool process (no ETA, or their ETA "
    "has come): what `celery inspect reserved` lists.",
    attributes=(TASK_NAME, QUEUE),
)
TASKS_SCHEDULED = MetricSpec(
    name="celery.tasks.scheduled",
    kind=InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER,
    unit="{task}",
    description="Prefetched tasks held until their ETA or countdown (or a rate limit's "
    "slot): what `celery inspect scheduled` lists.",
    attributes=(TASK_NAME, QUEUE),
)
TASKS_EXECUTING_OLDEST_AGE = MetricSpec(
    name="celery.tasks.executing.oldest_age",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="s",
    description="Seconds since the longest-running execution of the task on this worker "
    "started; 0 while none executes (a stuck task shows as a growing age).",
    attributes=(TASK_NAME, QUEUE),
)
TASKS_PAST_SOFT_TIME_LIMIT = MetricSpec(
    name="celery.tasks.past_soft_time_limit",
    kind=InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER,
    unit="{task}",
    description="Executing tasks running longer than their soft time limit (the message's, "
    "else the task's, else the worker's --soft-time-limit; tasks without one never "
    "count): the task caught SoftTimeLimitExceeded or its pool does not enforce limits.",
    attributes=(TASK_NAME, QUEUE),
)
WORKER_POOL_PROCESSES = MetricSpec(
    name="celery.worker.pool.processes",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{process}",
    description="Pool processes (threads, greenlets) this worker has now: "
    "celery_tasks_executing / this is its utilisation, 0..1.",
    attributes=(),
)
WORKER_POOL_MAX_PROCESSES = MetricSpec(
    name="celery.worker.pool.max_processes",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{process}",
    description="The most pool processes this worker may have: the --autoscale maximum, "
    "else the pool's size.",
    attributes=(),
)
WORKER_QUEUE_PROCESSES = MetricSpec(
    name="celery.worker.queue.processes",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{process}",
    description="This worker's pool processes, once per queue it consumes: summed by queue "
    "over the fleet, the capacity an autoscaler divides the queue's outstanding work by (a "
    "worker consuming two queues is capacity for both; docs/autoscaling.md).",
    attributes=(QUEUE,),
)
TASK_FAILURES = MetricSpec(
    name="celery.task.failures",
    kind=InstrumentKind.COUNTER,
    unit="{task}",
    description="Task failures (the task_failure signal) by exception class name.",
    attributes=(TASK_NAME, QUEUE, EXCEPTION_TYPE),
)
# Beat lateness: milliseconds when beat keeps up; minutes to a day when it was down or
# blocked (a run missed overnight shows as one send hours late).
BEAT_LATENESS_BUCKETS: tuple[float, ...] = (
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
)
BEAT_SENDS = MetricSpec(
    name="celery.beat.sends",
    kind=InstrumentKind.COUNTER,
    unit="{task}",
    description="Tasks celery beat sent, per schedule entry (a send that raised is not "
    "counted; Celery logs it).",
    attributes=(SCHEDULE_ENTRY, TASK_NAME),
    recorded_in="beat",
)
BEAT_LATENESS = MetricSpec(
    name="celery.beat.lateness",
    kind=InstrumentKind.HISTOGRAM,
    unit="s",
    description="How far behind its scheduled time each send of the entry went out (0 when "
    "on time; the first send after beat was down shows the whole gap). Entries whose "
    "schedule has no remaining_estimate have none.",
    attributes=(SCHEDULE_ENTRY, TASK_NAME),
    buckets=BEAT_LATENESS_BUCKETS,
    recorded_in="beat",
)
BEAT_LAST_SEND = MetricSpec(
    name="celery.beat.last_send.timestamp",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="s",
    description="Unix time of the entry's last send by this beat process: "
    "time() - this is how long ago the job last ran.",
    attributes=(SCHEDULE_ENTRY, TASK_NAME),
    recorded_in="beat",
)
SELF_OVERFLOW = MetricSpec(
    name="otel_celery_metrics.overflow",
    kind=InstrumentKind.COUNTER,
    unit="{measurement}",
    description="Measurements whose attribute value was replaced by the overflow value "
    "because a cardinality cap was reached (attribute: task_name, queue, schedule_entry or "
    "series).",
    attributes=(ATTRIBUTE,),
    recorded_in="self",
)
SELF_DROPPED = MetricSpec(
    name="otel_celery_metrics.dropped",
    kind=InstrumentKind.COUNTER,
    unit="{measurement}",
    description="Measurements lost before recording, by reason "
    "(pool_buffer_full, undecodable, internal_error; collection_timeout: a collection gave "
    "up a bounded wait and served without what it waited for; invalid_time: a time from "
    "outside, such as a publish-time header, that is not a finite number; "
    "implausible_time: a queue wait, runtime or beat lateness beyond its configured bound, "
    "see docs/configuration.md, Clocks and bad input). The task itself is still counted.",
    attributes=(REASON,),
    recorded_in="self",
)
SELF_DEGRADED = MetricSpec(
    name="otel_celery_metrics.degraded",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{flag}",  # not "1": see celery.worker.utilisation
    description="1 while this worker's instrumentation cannot work as configured, by reason "
    "(gevent_not_patched: -P gevent without gevent's patching before OpenTelemetry started; "
    "eventlet_not_patched: -P eventlet under opentelemetry-instrument); 0 otherwise. "
    "See docs/configuration.md, Pools.",
    attributes=(REASON,),
    recorded_in="self",
)
SELF_HOOK_INACTIVE = MetricSpec(
    name="otel_celery_metrics.hook_inactive",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{hook}",
    description="1 when one of our hooks into Celery or the OpenTelemetry SDK did not take "
    "effect at worker start (an ERROR line names it and the installed versions): the "
    "metrics it feeds are missing or incomplete. 0 when it is active.",
    attributes=(HOOK,),
    recorded_in="self",
)

SELF_RELAYED = MetricSpec(
    name="otel_celery_metrics.relayed",
    kind=InstrumentKind.COUNTER,
    unit="{item}",
    description="Metric points and spans that Celery pool children relayed to the worker's "
    "main process (signal: metrics or spans); a child that records nothing sends nothing.",
    attributes=(SIGNAL,),
    recorded_in="self",
)

#: Values of ``signal`` on ``otel_celery_metrics_relayed_total``.
RELAY_SIGNALS: tuple[str, ...] = ("metrics", "spans")
#: Values of ``reason`` on ``otel_celery_metrics_degraded``.
DEGRADED_REASONS: tuple[str, ...] = ("gevent_not_patched", "eventlet_not_patched")
#: Values of ``reason`` on ``otel_celery_metrics_dropped_total``.
DROP_REASONS: tuple[str, ...] = (
    "pool_buffer_full", "undecodable", "internal_error", "collection_timeout",
    values.INVALID_TIME, values.IMPLAUSIBLE_TIME,
)
#: Values of ``reason`` on ``celery_exporter_measurements_dropped_total``.
EXPORTER_MEASUREMENT_DROP_REASONS: tuple[str, ...] = values.REASONS
#: Values of ``attribute`` on ``otel_celery_metrics_overflow_total``.
OVERFLOW_ATTRIBUTES: tuple[str, ...] = ("task_name", "queue", "schedule_entry", "series")
#: Values of ``hook`` on ``otel_celery_metrics_hook_inactive``: the request class Celery's
#: worker builds (task outcomes), the readers' collection (histograms, fork fence), the
#: silencing of inherited exporters in prefork pool children.
HOOKS: tuple[str, ...] = ("request_class", "collection", "pool_child_silencing")

#: Every metric, in the order they are documented.
METRICS: tuple[MetricSpec, ...] = (
    TASKS,
    TASK_RUNTIME,
    TASK_FAILURES,
    TASKS_PUBLISHED,
    TASKS_RECEIVED,
    TASK_QUEUE_WAIT,
    TASKS_EXECUTING,
    TASKS_PREFETCHED,
    TASKS_RESERVED,
    TASKS_SCHEDULED,
    TASKS_EXECUTING_OLDEST_AGE,
    TASKS_PAST_SOFT_TIME_LIMIT,
    WORKER_POOL_PROCESSES,
    WORKER_POOL_MAX_PROCESSES,
    WORKER_QUEUE_PROCESSES,
    BEAT_SENDS,
    BEAT_LATENESS,
    BEAT_LAST_SEND,
    SELF_OVERFLOW,
    SELF_DROPPED,
    SELF_RELAYED,
    SELF_HOOK_INACTIVE,
    SELF_DEGRADED,
)

#: A metric's position in :data:`METRICS`; the compact id pool children send to the
#: main process instead of the name.
METRIC_INDEX: dict[str, int] = {spec.name: i for i, spec in enumerate(METRICS)}

#: The value that replaces a task name or queue once its cap is reached, and every
#: attribute of a measurement once a metric's series cap is reached.
OVERFLOW_VALUE = "__overflow__"

_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "1": ""}


def prometheus_name(spec: MetricSpec) -> str:
    """The series name OpenTelemetry's Prometheus translation gives ``spec``."""
    name = re.sub(r"[^a-zA-Z0-9:]+", "_", spec.name)
    unit = re.sub(r"\{.*?\}", "", spec.unit)
    suffix = _UNIT_SUFFIX.get(unit, unit)
    if suffix and not name.endswith("_" + suffix):
        name = f"{name}_{suffix}"
    if spec.kind is InstrumentKind.COUNTER:
        name += "_total"
    return name


def prometheus_type(spec: MetricSpec) -> str:
    """The ``# TYPE`` a Prometheus scrape shows for ``spec``."""
    return {
        InstrumentKind.COUNTER: "counter",
        InstrumentKind.HISTOGRAM: "histogram",
        InstrumentKind.OBSERVABLE_UP_DOWN_COUNTER: "gauge",
        InstrumentKind.OBSERVABLE_GAUGE: "gauge",
    }[spec.kind]


# ---------------------------------------------------------------------------------------
# Standalone exporter (``otel-celery-exporter``) -- exporter-only metrics.
#
# The exporter also publishes the METRICS above where the event stream carries them; the
# entries below exist only in the exporter (broker backlog, worker liveness read from
# heartbeats, the exporter's own health). The in-process Recorder never creates them.
# ---------------------------------------------------------------------------------------

_EXPORTER = "exporter"


def _task_counter(event: str, description: str) -> MetricSpec:
    return MetricSpec(
        name=f"celery.task.{event}",
        kind=InstrumentKind.COUNTER,
        unit="",
        description=description,
        attributes=(TASK_NAME, QUEUE),
        recorded_in=_EXPORTER,
    )


# The seed guide's per-event counters (``celery_task_<event>_total``), named EVENTS_* so they
# are not mistaken for the in-process TASKS_* metrics. Unit "" keeps the series names
# exactly as the seed and dashboards built on it spell them.
EVENTS_TASK_SENT = _task_counter("sent", "task-sent events: task messages published by producers.")
EVENTS_TASK_RECEIVED = _task_counter(
    "received", "task-received events: messages a worker received."
)
EVENTS_TASK_STARTED = _task_counter("started", "task-started events: executions that began.")
EVENTS_TASK_SUCCEEDED = _task_counter(
    "succeeded", "task-succeeded events: executions that succeeded."
)
EVENTS_TASK_FAILED = _task_counter("failed", "task-failed events: executions that raised.")
EVENTS_TASK_RETRIED = _task_counter(
    "retried", "task-retried events: executions that asked a retry."
)
EVENTS_TASK_REJECTED = _task_counter(
    "rejected", "task-rejected events: messages a worker rejected."
)
EVENTS_TASK_REVOKED = _task_counter(
    "revoked", "task-revoked events: tasks revoked before or in a run."
)
WORKER_UP = MetricSpec(
    name="celery.worker.up",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="",
    description="1 while the worker's heartbeats arrive within the timeout, 0 once they stop "
    "(until the worker is forgotten). hostname is the full node name (celery@host).",
    attributes=(HOSTNAME,),
    recorded_in=_EXPORTER,
)
WORKER_TASKS_ACTIVE = MetricSpec(
    name="celery.worker.tasks.active",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{task}",
    description="Tasks executing on the worker, as its last heartbeat reported.",
    attributes=(HOSTNAME,),
    recorded_in=_EXPORTER,
)
WORKER_PROCESSES = MetricSpec(
    name="celery.worker.processes",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{process}",
    description="Pool processes of the worker (from the last inspect stats reply).",
    attributes=(HOSTNAME,),
    recorded_in=_EXPORTER,
)
WORKER_UTILISATION = MetricSpec(
    name="celery.worker.utilisation",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    # A dimensionless annotation, not "1": the Collector's Prometheus translation names a
    # gauge of unit "1" *_ratio while our /metrics does not; "{ratio}" is one name on both.
    unit="{ratio}",
    description="Busy share of the worker's pool, 0..1: tasks active at its last heartbeat "
    "over its pool processes (last inspect stats reply); absent until both are known.",
    attributes=(HOSTNAME,),
    recorded_in=_EXPORTER,
)
QUEUE_MESSAGES = MetricSpec(
    name="celery.queue.messages",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{message}",
    description="Messages waiting in the broker queue (Redis: all priority lists summed; "
    "RabbitMQ: ready messages from a passive declare; SQS: ApproximateNumberOfMessages).",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_OLDEST_MESSAGE_AGE = MetricSpec(
    name="celery.queue.oldest_message.age",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="s",
    description="Redis only: how long the oldest message waiting in the queue (over its "
    "priority lists) has waited, read without consuming it; 0 when the queue is empty. Its "
    "time is our publish header (instrumented producer), else the task-sent event of its "
    "task id; absent when neither is known. RabbitMQ cannot show a queue's head without "
    "delivering it: no such series there (see docs/exporter.md).",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_IN_FLIGHT = MetricSpec(
    name="celery.queue.in_flight",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{message}",
    description="SQS only: messages received from the queue and not yet deleted "
    "(ApproximateNumberOfMessagesNotVisible): executing, prefetched, or ETA/countdown tasks "
    "a worker holds until their time.",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_DELAYED = MetricSpec(
    name="celery.queue.delayed",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{message}",
    description="SQS only: messages sent with a delay that are not visible yet "
    "(ApproximateNumberOfMessagesDelayed).",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_UNACKED = MetricSpec(
    name="celery.queue.unacked",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{message}",
    description="Redis only: messages of the queue delivered to a worker and not yet "
    "acknowledged (kombu's unacked hash) that wait for a pool process: prefetched, ETA due "
    "or none, not seen executing (an acks_late task that started is in "
    "celery_tasks_executing instead). 0 when none.",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_UNACKED_SCHEDULED = MetricSpec(
    name="celery.queue.unacked.scheduled",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{message}",
    description="Redis only: unacknowledged messages of the queue a worker holds until an "
    "ETA or countdown still ahead (not yet work to scale up for). 0 when none.",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_CONSUMERS = MetricSpec(
    name="celery.queue.consumers",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{consumer}",
    description="Consumers attached to the queue (RabbitMQ only).",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_WORKERS = MetricSpec(
    name="celery.queue.workers",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{worker}",
    description="Live workers consuming from the queue (from inspect active_queues).",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
QUEUE_PROCESSES = MetricSpec(
    name="celery.queue.processes",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{process}",
    description="Pool processes of the live workers consuming from the queue.",
    attributes=(QUEUE,),
    recorded_in=_EXPORTER,
)
EXPORTER_BROKER_CONNECTED = MetricSpec(
    name="celery_exporter.broker.connected",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="",
    description="1 while the event receiver is connected to the broker, else 0 (in "
    "probe-only mode: 1 while the last queue depth probe succeeded).",
    attributes=(),
    recorded_in=_EXPORTER,
)
EXPORTER_EVENT_STREAM = MetricSpec(
    name="celery_exporter.event_stream",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="",
    description="1 when the broker's transport carries Celery events and broadcasts and the "
    "exporter reads them; 0 in probe-only mode (SQS and any kombu transport without fanout), "
    "where only queue depth is reported.",
    attributes=(),
    recorded_in=_EXPORTER,
)
EXPORTER_RECONNECTS = MetricSpec(
    name="celery_exporter.broker.reconnects",
    kind=InstrumentKind.COUNTER,
    unit="",
    description="Times the event receiver lost the broker and connected again.",
    attributes=(),
    recorded_in=_EXPORTER,
)
EXPORTER_EVENTS_RECEIVED = MetricSpec(
    name="celery_exporter.events.received",
    kind=InstrumentKind.COUNTER,
    unit="",
    description="Events decoded from the broker, by event type.",
    attributes=(EVENT_TYPE,),
    recorded_in=_EXPORTER,
)
EXPORTER_EVENTS_DROPPED = MetricSpec(
    name="celery_exporter.events.dropped",
    kind=InstrumentKind.COUNTER,
    unit="",
    description="Events not counted, by event type and reason (undecodable, invalid_field, "
    "filtered, unknown_type, backlog_full, internal_error; on RabbitMQ also what the broker "
    "dropped from the exporter's event queue: broker_queue_full, broker_expired).",
    attributes=(EVENT_TYPE, REASON),
    recorded_in=_EXPORTER,
)
EXPORTER_MEASUREMENTS_DROPPED = MetricSpec(
    name="celery_exporter.measurements.dropped",
    kind=InstrumentKind.COUNTER,
    unit="",
    description="Values of counted events that were not recorded, by reason (invalid_time: "
    "a timestamp or runtime that is not a finite number; implausible_time: a queue wait or "
    "runtime beyond its bound, --max-queue-wait, --max-runtime, --clock-skew-tolerance; "
    "invalid_number: a worker's active or processed count that is not a whole number >= 0). "
    "The event itself is counted.",
    attributes=(REASON,),
    recorded_in=_EXPORTER,
)
EXPORTER_LAST_EVENT_AGE = MetricSpec(
    name="celery_exporter.last_event.age",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="s",
    description="Seconds since the last event arrived (-1 before the first).",
    attributes=(),
    recorded_in=_EXPORTER,
)
EXPORTER_PROBE_AGE = MetricSpec(
    name="celery_exporter.probe.age",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="s",
    description="Age of the values a background probe last produced (probe: queues, "
    "inspect); -1 before its first success. Scrapes never wait on the broker.",
    attributes=(PROBE,),
    recorded_in=_EXPORTER,
)
EXPORTER_WORKERS_WITHOUT_TASK_EVENTS = MetricSpec(
    name="celery_exporter.workers_without_task_events",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="{worker}",
    description="Live workers that process tasks (heartbeats) but send no task events: "
    "task events are disabled there (start them with -E or use --enable-events).",
    attributes=(),
    recorded_in=_EXPORTER,
)

#: Metrics only the standalone exporter publishes, in the order they are documented.
EXPORTER_METRICS: tuple[MetricSpec, ...] = (
    EVENTS_TASK_SENT,
    EVENTS_TASK_RECEIVED,
    EVENTS_TASK_STARTED,
    EVENTS_TASK_SUCCEEDED,
    EVENTS_TASK_FAILED,
    EVENTS_TASK_RETRIED,
    EVENTS_TASK_REJECTED,
    EVENTS_TASK_REVOKED,
    WORKER_UP,
    WORKER_TASKS_ACTIVE,
    WORKER_PROCESSES,
    WORKER_UTILISATION,
    QUEUE_MESSAGES,
    QUEUE_OLDEST_MESSAGE_AGE,
    QUEUE_IN_FLIGHT,
    QUEUE_DELAYED,
    QUEUE_UNACKED,
    QUEUE_UNACKED_SCHEDULED,
    QUEUE_CONSUMERS,
    QUEUE_WORKERS,
    QUEUE_PROCESSES,
    EXPORTER_BROKER_CONNECTED,
    EXPORTER_EVENT_STREAM,
    EXPORTER_RECONNECTS,
    EXPORTER_EVENTS_RECEIVED,
    EXPORTER_EVENTS_DROPPED,
    EXPORTER_MEASUREMENTS_DROPPED,
    EXPORTER_LAST_EVENT_AGE,
    EXPORTER_PROBE_AGE,
    EXPORTER_WORKERS_WITHOUT_TASK_EVENTS,
)
