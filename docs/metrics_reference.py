"""The metrics reference, ``docs/metrics.md``, generated from the one metric table.

    python docs/metrics_reference.py > docs/metrics.md

The table (:mod:`otel_celery_metrics.core.metric_table`) holds the specs; this generator holds
what only the document needs: the layout, and where each attribute's values come from and
what bounds them (:data:`ATTRIBUTE_SOURCES`, each naming the tests that check it). A unit
test fails when ``docs/metrics.md`` and this output disagree, and when a test named here
does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_celery_metrics.core import metric_table as mt

#: How task names are bounded, the one wording of it: the reference prints it and
#: docs/configuration.md's OTEL_CELERY_METRICS_MAX_TASK_NAMES row must agree (a test).
TASK_NAME_CAP_RULE = (
    "A cap on distinct names, registered or not: OTEL_CELERY_METRICS_MAX_TASK_NAMES / "
    "`--max-task-names` (default 500) per worker or exporter, taken by names in the order "
    "they are first recorded; every later new name, a registered task's included, is "
    "recorded as `__overflow__` and counted in "
    "`otel_celery_metrics_overflow_total{attribute=\"task_name\"}`. Set it above the number "
    "of tasks your app registers."
)


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


T_ROUTING = "tests/unit/test_routing.py::"
T_OUTCOMES = "tests/unit/test_outcomes.py::"
T_RECEIVERS = "tests/unit/test_receivers.py::"
T_RECORDER = "tests/unit/test_recorder.py::"
T_HANDLERS = "tests/exporter/unit/test_handlers.py::"

#: Every attribute key of :data:`METRICS` and :data:`EXPORTER_METRICS`, documented.
ATTRIBUTE_SOURCES: tuple[AttributeSource, ...] = (
    AttributeSource(
        mt.TASK_NAME,
        in_process="Worker: the registered name of the task whose request class Celery "
        "built (one per registered task; a message's shadow name is not used); for a "
        "message naming no registered task (REJECTED), the name it carries. Producer: the "
        "`task` header of the published message.",
        exporter="The `name` of the task-sent or task-received event, kept per task id "
        "for the later events (`unknown` when the exporter never saw either).",
        bounded=TASK_NAME_CAP_RULE,
        tests=(
            T_OUTCOMES + "test_a_shadow_name_counts_under_the_registered_task_name",
            T_OUTCOMES
            + "test_executing_and_prefetched_label_the_registered_name_and_consumed_queue",
            T_RECORDER + "test_task_names_past_the_cap_become_overflow_and_are_counted",
            T_HANDLERS + "test_counts_every_event_once_under_seed_and_unified_names",
        ),
    ),
    AttributeSource(
        mt.QUEUE,
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
            T_ROUTING + "test_consumers_stamp_the_queue_a_message_came_from_not_its_routing_key",
            T_OUTCOMES + "test_every_callback_labels_the_queue_the_message_was_consumed_from",
            T_OUTCOMES
            + "test_an_unstamped_message_counts_under_the_default_queue_not_its_routing_key",
            T_OUTCOMES
            + "test_an_unstamped_message_whose_routing_key_names_a_consumed_queue_counts_there",
            T_ROUTING
            + "test_the_producer_labels_the_resolved_queue_only_when_the_message_reaches_it",
            T_RECEIVERS + "test_publish_stamps_the_header_and_counts_by_the_resolved_queue",
            T_HANDLERS + "test_task_sent_labels_the_destination_queue_never_the_routing_key",
            T_HANDLERS + "test_a_worker_with_one_queue_labels_what_it_received_with_it",
            T_HANDLERS
            + "test_events_of_a_worker_with_several_queues_wait_for_their_late_task_sent",
            "tests/integration/test_queue_label.py::"
            "test_queue_label_is_the_consumed_queue_for_every_routing_style",
            T_RECORDER + "test_queues_past_the_cap_become_overflow_and_are_counted",
        ),
    ),
    AttributeSource(
        mt.STATE,
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
            T_OUTCOMES + "test_raised_outcomes_count_their_state_and_runtime",
            T_RECEIVERS + "test_revoked_unknown_and_rejected_messages_count_their_state",
            T_HANDLERS + "test_retry_revoke_reject_and_executing",
        ),
    ),
    AttributeSource(
        mt.EXCEPTION_TYPE,
        in_process="The class name of the exception the task raised (the wrapped class's "
        "name for an exception Celery could not pickle); never its message.",
        exporter="The class name at the start of task-failed's `exception` text "
        "(`KeyError('...')` gives `KeyError`); `unknown` if there is none.",
        bounded="The exception classes of the tasks' code; within the per-metric series cap "
        "(OTEL_CELERY_METRICS_MAX_SERIES_PER_METRIC).",
        tests=(
            T_OUTCOMES + "test_raised_outcomes_count_their_state_and_runtime",
            T_HANDLERS + "test_counts_every_event_once_under_seed_and_unified_names",
        ),
    ),
    AttributeSource(
        mt.WAIT_FROM,
        in_process="The reference the wait was measured from: the producer's publish "
        "header, the task's ETA when later, or the worker's receipt time.",
        exporter="The same, from task-sent's timestamp, the ETA, or task-received.",
        bounded="A fixed set: publish, eta, received.",
        tests=(
            T_OUTCOMES + "test_queue_wait_counts_from_publish_then_a_later_eta",
            T_HANDLERS + "test_queue_wait_counts_from_eta_when_it_is_later_than_publish",
        ),
    ),
    AttributeSource(
        mt.REASON,
        in_process="Why measurements were lost (dropped) or, on the exporter's "
        "events.dropped, why an event was not counted.",
        exporter="As in-process, for the exporter's own reasons.",
        bounded="Fixed sets written in the code.",
        tests=(
            "tests/unit/test_prefork_bridge.py::"
            "test_a_full_socket_never_blocks_and_drops_only_past_the_bound",
            T_HANDLERS + "test_a_malformed_event_is_dropped_and_counted_never_raised",
        ),
    ),
    AttributeSource(
        mt.ATTRIBUTE,
        in_process="The attribute whose cap replaced a value (overflow).",
        exporter="-",
        bounded="A fixed set: task_name, queue, schedule_entry, series.",
        tests=(T_RECORDER + "test_series_past_the_cap_fold_into_one_all_overflow_series",),
    ),
    AttributeSource(
        mt.SIGNAL,
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
        mt.HOOK,
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
        mt.SCHEDULE_ENTRY,
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
        mt.HOSTNAME,
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
        mt.EVENT_TYPE,
        in_process="-",
        exporter="The event's `type`; types Celery does not define count as `other`.",
        bounded="Celery's event types plus `other`.",
        tests=(T_HANDLERS + "test_a_malformed_event_is_dropped_and_counted_never_raised",),
    ),
    AttributeSource(
        mt.PROBE,
        in_process="-",
        exporter="The background probe: `queues` or `inspect`.",
        bounded="A fixed set.",
        tests=("tests/exporter/unit/test_service.py::test_self_metrics_before_any_event",),
    ),
)


def render_reference() -> str:
    """The Markdown metrics reference (``docs/metrics.md``), generated from :data:`METRICS`."""
    lines = [
        "# Metrics reference",
        "",
        "Generated from `otel_celery_metrics/core/metric_table.py` by "
        "`python docs/metrics_reference.py > docs/metrics.md`; "
        "a test fails when this file and the table disagree.",
        "",
        "| Prometheus series | OpenTelemetry name | Instrument | Unit | Attributes | Description |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in mt.METRICS:
        attrs = ", ".join(f"`{a}`" for a in spec.attributes)
        lines.append(
            f"| `{spec.prometheus_name}` | `{spec.name}` | {spec.kind.value} | "
            f"`{spec.unit}` | {attrs} | {spec.description} |"
        )
    lines += _render_exporter_section()
    lines += ["", "## Default histogram buckets", ""]
    for spec in mt.METRICS:
        if spec.buckets:
            bounds = ", ".join(f"{b:g}" for b in spec.buckets)
            lines.append(f"- `{spec.prometheus_name}`: {bounds} (seconds)")
    lines += [
        "",
        "## Attribute values",
        "",
        f"- `state`: one of {', '.join(f'`{s}`' for s in mt.TERMINAL_STATES)}.",
        "- `wait_from`: `publish`, `eta` or `received`.",
        f"- `reason` (dropped): {', '.join(f'`{r}`' for r in mt.DROP_REASONS)}.",
        "- `reason` (exporter's measurements.dropped): "
        f"{', '.join(f'`{r}`' for r in mt.EXPORTER_MEASUREMENT_DROP_REASONS)}.",
        f"- `reason` (degraded): {', '.join(f'`{r}`' for r in mt.DEGRADED_REASONS)}.",
        f"- `attribute` (overflow): {', '.join(f'`{a}`' for a in mt.OVERFLOW_ATTRIBUTES)}.",
        f"- `signal` (relayed): {', '.join(f'`{s}`' for s in mt.RELAY_SIGNALS)}.",
        f"- `hook` (hook_inactive): {', '.join(f'`{h}`' for h in mt.HOOKS)}.",
        f"- Overflow value (task name, queue, or every attribute past the series cap): "
        f"`{mt.OVERFLOW_VALUE}`.",
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
    for spec in mt.EXPORTER_METRICS:
        attrs = ", ".join(f"`{a}`" for a in spec.attributes) or "-"
        unit = f"`{spec.unit}`" if spec.unit else "-"
        lines.append(
            f"| `{spec.prometheus_name}` | `{spec.name}` | {spec.kind.value} | "
            f"{unit} | {attrs} | {spec.description} |"
        )
    return lines


if __name__ == "__main__":
    print(render_reference(), end="")
