"""The one table of metrics: names, instrument kinds, units, descriptions, attributes, buckets.

Instruments (:mod:`otel_celery_metrics._recorder`), the standalone exporter,
``docs/metrics.md`` and the tests all come from :data:`METRICS`. Change a metric here and
the reference test tells you which document to regenerate (``python -m
otel_celery_metrics.metric_table > docs/metrics.md``).

Names are OpenTelemetry names; :func:`prometheus_name` gives the series name the
OpenTelemetry Prometheus exporter (and the Collector's ``prometheus`` exporter) produce:
dots become underscores, the UCUM unit becomes a suffix (``s`` -> ``_seconds``, curly
annotations such as ``{task}`` add nothing) and monotonic counters end in ``_total``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


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
# hostnames. ATTRIBUTE_SOURCES says where each value comes from and what bounds it.
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
    "up a bounded wait and served without what it waited for).",
    attributes=(REASON,),
    recorded_in="self",
)
SELF_DEGRADED = MetricSpec(
    name="otel_celery_metrics.degraded",
    kind=InstrumentKind.OBSERVABLE_GAUGE,
    unit="1",
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
)
#: Values of ``attribute`` on ``otel_celery_metrics_overflow_total``.
OVERFLOW_ATTRIBUTES: tuple[str, ...] = ("task_name", "queue", "schedule_entry", "series")
#: Values of ``hook`` on ``otel_celery_metrics_hook_inactive``: the request class Celery's
#: worker builds (task outcomes), the readers' collection (histograms, fork fence), the
#: silencing of inherited exporters in prefork pool children.
HOOKS: tuple[str, ...] = ("request_class", "collection", "pool_child_silencing")

@dataclass(frozen=True)
class AttributeSource:
    """Where one attribute's values come from, and why there are few of them.

    ``tests`` name the tests (``path::function``) that check each source; a unit test
    fails when one of them does not exist.
    """

    key: str
    in_process: str
    exporter: str
    bounded: str
    tests: tuple[str, ...]


_T_ROUTING = "tests/unit/test_routing.py::"
_T_OUTCOMES = "tests/unit/test_outcomes.py::"
_T_RECEIVERS = "tests/unit/test_receivers.py::"
_T_RECORDER = "tests/unit/test_recorder.py::"
_T_HANDLERS = "tests/exporter/unit/test_handlers.py::"

#: Every attribute key of :data:`METRICS` and :data:`EXPORTER_METRICS`, documented.
ATTRIBUTE_SOURCES: tuple[AttributeSource, ...] = (
    AttributeSource(
        TASK_NAME,
        in_process="Worker: the registered name of the task whose request class Celery "
        "built (one per registered task; a message's shadow name is not used); for a "
        "message naming no registered task (REJECTED), the name it carries. Producer: the "
        "`task` header of the published message.",
        exporter="The `name` of the task-sent or task-received event, kept per task id "
        "for the later events (`unknown` when the exporter never saw either).",
        bounded="The app's task registry. Names that are not registered (unknown tasks, "
        "send_task by name) are capped: OTEL_CELERY_METRICS_MAX_TASK_NAMES / "
        "`--max-task-names`, then `__overflow__`.",
        tests=(
            _T_OUTCOMES + "test_a_shadow_name_counts_under_the_registered_task_name",
            _T_OUTCOMES
            + "test_executing_and_prefetched_label_the_registered_name_and_consumed_queue",
            _T_RECORDER + "test_task_names_past_the_cap_become_overflow_and_are_counted",
            _T_HANDLERS + "test_counts_every_event_once_under_seed_and_unified_names",
        ),
    ),
    AttributeSource(
        QUEUE,
        in_process="Worker: the queue the worker consumed the message from. kombu calls "
        "one consumer callback per queue; the instrumentation wraps `kombu.Queue.consume` "
        "so that callback writes its queue's name into the message's `delivery_info`: "
        "exact for every pool, broker, exchange type (direct, topic, fanout, headers) and "
        "routing style (default, `task_routes`, `queue=`, `exchange=`+`routing_key=`). "
        "Only a message from a consumer started before instrumentation has no such "
        "name: then the routing key if it is the name of a queue the worker consumes, "
        "else OTEL_CELERY_METRICS_DEFAULT_QUEUE (an ERROR is logged once). Producer "
        "(`celery.tasks.published`): the queue Celery resolved (`queue=`, `task_routes`, "
        "the default queue) when one of its bindings takes the message's exchange, "
        "routing key and headers; else the default queue. A message that an exchange "
        "copies to several queues is counted once, under the resolved queue.",
        exporter="task-sent's `queue` (the queue Celery resolved), checked against the "
        "bindings the workers report (`inspect active_queues`): when the event's exchange "
        "and routing key bypass it, the one known queue they reach, else `--default-queue`. "
        "Worker events carry no queue: a worker consuming one queue labels what it "
        "receives with it; for a worker consuming several, the task's task-sent queue (its "
        "events wait up to 2 s for a late task-sent), else `--default-queue`.",
        bounded="Queue names come from configuration (`-Q`, `task_queues`, `task_routes`), "
        "never from a routing key, which with topic, fanout and headers exchanges is "
        "whatever the producer chose. Capped: OTEL_CELERY_METRICS_MAX_QUEUES / "
        "`--max-queues`, then `__overflow__`.",
        tests=(
            _T_ROUTING + "test_consumers_stamp_the_queue_a_message_came_from_not_its_routing_key",
            _T_OUTCOMES + "test_every_callback_labels_the_queue_the_message_was_consumed_from",
            _T_OUTCOMES
            + "test_an_unstamped_message_counts_under_the_default_queue_not_its_routing_key",
            _T_OUTCOMES
            + "test_an_unstamped_message_whose_routing_key_names_a_consumed_queue_counts_there",
            _T_ROUTING
            + "test_the_producer_labels_the_resolved_queue_only_when_the_message_reaches_it",
            _T_RECEIVERS + "test_publish_stamps_the_header_and_counts_by_the_resolved_queue",
            _T_HANDLERS + "test_task_sent_labels_the_destination_queue_never_the_routing_key",
            _T_HANDLERS + "test_a_worker_with_one_queue_labels_what_it_received_with_it",
            _T_HANDLERS
            + "test_events_of_a_worker_with_several_queues_wait_for_their_late_task_sent",
            "tests/integration/test_queue_label.py::"
            "test_queue_label_is_the_consumed_queue_for_every_routing_style",
            _T_RECORDER + "test_queues_past_the_cap_become_overflow_and_are_counted",
        ),
    ),
    AttributeSource(
        STATE,
        in_process="Which request callback ended the task and, for an execution that "
        "raised, Celery's control-flow exception (Retry, Ignore, Reject); REVOKED and "
        "REJECTED from the worker's task_revoked, task_unknown and task_rejected signals. "
        "On celery.task.runtime, the state the execution ended in, so failed runs are "
        "separable from successful ones.",
        exporter="The event type (task-succeeded, task-failed, task-retried, "
        "task-rejected, task-revoked).",
        bounded="A fixed set (see Attribute values). On the runtime histogram a series "
        "exists only for the states a task's executions ended in (usually SUCCESS alone; "
        "SUCCESS and FAILURE for tasks that fail): chosen over a second histogram, which "
        "would cost the same series for failing tasks but split every runtime query in "
        "two; `sum without (state)` gives one histogram per task and queue.",
        tests=(
            _T_OUTCOMES + "test_raised_outcomes_count_their_state_and_runtime",
            _T_RECEIVERS + "test_revoked_unknown_and_rejected_messages_count_their_state",
            _T_HANDLERS + "test_retry_revoke_reject_and_executing",
        ),
    ),
    AttributeSource(
        EXCEPTION_TYPE,
        in_process="The class name of the exception the task raised (the wrapped class's "
        "name for an exception Celery could not pickle); never its message.",
        exporter="The class name at the start of task-failed's `exception` text "
        "(`KeyError('...')` gives `KeyError`); `unknown` if there is none.",
        bounded="The exception classes of the tasks' code; within the per-metric series cap "
        "(OTEL_CELERY_METRICS_MAX_SERIES_PER_METRIC).",
        tests=(
            _T_OUTCOMES + "test_raised_outcomes_count_their_state_and_runtime",
            _T_HANDLERS + "test_counts_every_event_once_under_seed_and_unified_names",
        ),
    ),
    AttributeSource(
        WAIT_FROM,
        in_process="The reference the wait was measured from: the producer's publish "
        "header, the task's ETA when later, or the worker's receipt time.",
        exporter="The same, from task-sent's timestamp, the ETA, or task-received.",
        bounded="A fixed set: publish, eta, received.",
        tests=(
            _T_OUTCOMES + "test_queue_wait_counts_from_publish_then_a_later_eta",
            _T_HANDLERS + "test_queue_wait_counts_from_eta_when_it_is_later_than_publish",
        ),
    ),
    AttributeSource(
        REASON,
        in_process="Why measurements were lost (dropped) or, on the exporter's "
        "events.dropped, why an event was not counted.",
        exporter="As in-process, for the exporter's own reasons.",
        bounded="Fixed sets written in the code.",
        tests=(
            "tests/unit/test_prefork_bridge.py::"
            "test_a_full_socket_never_blocks_and_drops_only_past_the_bound",
            _T_HANDLERS + "test_a_malformed_event_is_dropped_and_counted_never_raised",
        ),
    ),
    AttributeSource(
        ATTRIBUTE,
        in_process="The attribute whose cap replaced a value (overflow).",
        exporter="-",
        bounded="A fixed set: task_name, queue, schedule_entry, series.",
        tests=(_T_RECORDER + "test_series_past_the_cap_fold_into_one_all_overflow_series",),
    ),
    AttributeSource(
        SIGNAL,
        in_process="What a pool child relayed to the worker's main process (relayed).",
        exporter="-",
        bounded="A fixed set: metrics, spans.",
        tests=(
            "tests/integration/test_relay.py::"
            "test_a_task_that_records_nothing_relays_nothing_and_relay_off_keeps_todays_behaviour",
            "tests/integration/test_relay.py::"
            "test_otlp_gets_every_span_and_metric_of_recycled_children_under_one_identity",
        ),
    ),
    AttributeSource(
        HOOK,
        in_process="Which of our hooks into Celery or the OpenTelemetry SDK did not take "
        "effect, checked at worker start (hook_inactive).",
        exporter="-",
        bounded="A fixed set: request_class, collection, pool_child_silencing.",
        tests=(
            "tests/unit/test_instrumentor_lifecycle.py::"
            "test_a_celery_that_builds_requests_another_way_is_reported_and_tasks_still_run",
            "tests/unit/test_instrumentor_lifecycle.py::"
            "test_a_reader_without_the_private_collect_hook_is_reported_and_histograms_still_appear",
            "tests/unit/test_instrumentor_lifecycle.py::"
            "test_a_pool_child_whose_exporter_cannot_be_silenced_is_reported_to_the_main_process",
        ),
    ),
    AttributeSource(
        SCHEDULE_ENTRY,
        in_process="Beat: the name of the schedule entry beat sent (the key of "
        "`beat_schedule`, or the scheduler's entry name, e.g. a django-celery-beat "
        "PeriodicTask's name).",
        exporter="-",
        bounded="The schedule. Capped like task names (OTEL_CELERY_METRICS_MAX_TASK_NAMES "
        "distinct entries), then `__overflow__`.",
        tests=(
            "tests/unit/test_beat.py::test_each_send_counts_its_entry_lateness_and_time",
            "tests/unit/test_beat.py::test_entries_past_the_cap_become_overflow",
            "tests/integration/test_beat.py::"
            "test_a_real_beat_reports_sends_lateness_and_last_send_per_entry",
        ),
    ),
    AttributeSource(
        HOSTNAME,
        in_process="-",
        exporter="The `hostname` of worker events (the node name, celery@host).",
        bounded="Live workers; capped by `--max-workers` and forgotten once their "
        "heartbeats stop.",
        tests=(
            "tests/exporter/unit/test_liveness.py::test_worker_cap_counts_overflow",
            "tests/exporter/unit/test_service.py::"
            "test_a_forgotten_workers_hostname_labelled_task_series_are_removed",
        ),
    ),
    AttributeSource(
        EVENT_TYPE,
        in_process="-",
        exporter="The event's `type`; types Celery does not define count as `other`.",
        bounded="Celery's event types plus `other`.",
        tests=(_T_HANDLERS + "test_a_malformed_event_is_dropped_and_counted_never_raised",),
    ),
    AttributeSource(
        PROBE,
        in_process="-",
        exporter="The background probe: `queues` or `inspect`.",
        bounded="A fixed set.",
        tests=("tests/exporter/unit/test_service.py::test_self_metrics_before_any_event",),
    ),
)

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


def render_reference() -> str:
    """The Markdown metrics reference (``docs/metrics.md``), generated from :data:`METRICS`."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `otel_celery_metrics/metric_table.py` by "
        "`python -m otel_celery_metrics.metric_table > docs/metrics.md`; "
        "a test fails when this file and the table disagree.",
        "",
        "| Prometheus series | OpenTelemetry name | Instrument | Unit | Attributes | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in METRICS:
        attrs = ", ".join(f"`{a}`" for a in spec.attributes)
        lines.append(
            f"| `{spec.prometheus_name}` | `{spec.name}` | {spec.kind.value} | "
            f"`{spec.unit}` | {attrs} | {spec.description} |"
        )
    lines += _render_exporter_section()
    lines += ["", "## Default histogram buckets", ""]
    for spec in METRICS:
        if spec.buckets:
            bounds = ", ".join(f"{b:g}" for b in spec.buckets)
            lines.append(f"- `{spec.prometheus_name}`: {bounds} (seconds)")
    lines += [
        "",
        "## Attribute values",
        "",
        f"- `state`: one of {', '.join(f'`{s}`' for s in TERMINAL_STATES)}.",
        "- `wait_from`: `publish`, `eta` or `received`.",
        f"- `reason` (dropped): {', '.join(f'`{r}`' for r in DROP_REASONS)}.",
        f"- `reason` (degraded): {', '.join(f'`{r}`' for r in DEGRADED_REASONS)}.",
        f"- `attribute` (overflow): {', '.join(f'`{a}`' for a in OVERFLOW_ATTRIBUTES)}.",
        f"- `signal` (relayed): {', '.join(f'`{s}`' for s in RELAY_SIGNALS)}.",
        f"- `hook` (hook_inactive): {', '.join(f'`{h}`' for h in HOOKS)}.",
        f"- Overflow value (task name, queue, or every attribute past the series cap): "
        f"`{OVERFLOW_VALUE}`.",
        "",
        "## Where attribute values come from",
        "",
        "No attribute ever holds a task id, arguments, results, an exception message, a "
        "routing key or a producer's hostname.",
        "",
        "| Attribute | In-process (worker, producer) | Standalone exporter | Why it is bounded |",
        "| --- | --- | --- | --- |",
    ]
    for source in ATTRIBUTE_SOURCES:
        lines.append(
            f"| `{source.key}` | {source.in_process} | {source.exporter} | {source.bounded} |"
        )
    lines.append("")
    return "\n".join(lines)


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


# The seed guide's per-event counters (``celery_task_<event>_total``). Unit "" keeps the
# series names exactly as the seed and dashboards built on it spell them.
TASK_SENT = _task_counter("sent", "task-sent events: task messages published by producers.")
TASK_RECEIVED = _task_counter("received", "task-received events: messages a worker received.")
TASK_STARTED = _task_counter("started", "task-started events: executions that began.")
TASK_SUCCEEDED = _task_counter("succeeded", "task-succeeded events: executions that succeeded.")
TASK_FAILED = _task_counter("failed", "task-failed events: executions that raised.")
TASK_RETRIED = _task_counter("retried", "task-retried events: executions that asked a retry.")
TASK_REJECTED = _task_counter("rejected", "task-rejected events: messages a worker rejected.")
TASK_REVOKED = _task_counter("revoked", "task-revoked events: tasks revoked before or in a run.")
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
    unit="1",
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
    "RabbitMQ: ready messages from a passive declare).",
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
    description="1 while the event receiver is connected to the broker, else 0.",
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
    TASK_SENT,
    TASK_RECEIVED,
    TASK_STARTED,
    TASK_SUCCEEDED,
    TASK_FAILED,
    TASK_RETRIED,
    TASK_REJECTED,
    TASK_REVOKED,
    WORKER_UP,
    WORKER_TASKS_ACTIVE,
    WORKER_PROCESSES,
    WORKER_UTILISATION,
    QUEUE_MESSAGES,
    QUEUE_OLDEST_MESSAGE_AGE,
    QUEUE_UNACKED,
    QUEUE_UNACKED_SCHEDULED,
    QUEUE_CONSUMERS,
    QUEUE_WORKERS,
    QUEUE_PROCESSES,
    EXPORTER_BROKER_CONNECTED,
    EXPORTER_RECONNECTS,
    EXPORTER_EVENTS_RECEIVED,
    EXPORTER_EVENTS_DROPPED,
    EXPORTER_LAST_EVENT_AGE,
    EXPORTER_PROBE_AGE,
    EXPORTER_WORKERS_WITHOUT_TASK_EVENTS,
)


def _render_exporter_section() -> list[str]:
    lines = [
        "",
        "## Standalone exporter only",
        "",
        "`otel-celery-exporter` publishes these in addition to the metrics above that the "
        "event stream carries (see `docs/exporter.md`).",
        "",
        "| Prometheus series | OpenTelemetry name | Instrument | Unit | Attributes | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in EXPORTER_METRICS:
        attrs = ", ".join(f"`{a}`" for a in spec.attributes) or "-"
        unit = f"`{spec.unit}`" if spec.unit else "-"
        lines.append(
            f"| `{spec.prometheus_name}` | `{spec.name}` | {spec.kind.value} | "
            f"{unit} | {attrs} | {spec.description} |"
        )
    return lines


if __name__ == "__main__":
    print(render_reference(), end="")
