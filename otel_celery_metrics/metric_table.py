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
# from. Never task ids, arguments, results, exception messages or producer hostnames.
TASK_NAME = "task_name"
QUEUE = "queue"
STATE = "state"
EXCEPTION_TYPE = "exception_type"
WAIT_FROM = "wait_from"
REASON = "reason"
ATTRIBUTE = "attribute"

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
    #: Where it is measured: "worker" (in-process), "producer", "self" (our own health).
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
    description="Execution time of tasks that ran to completion "
    "(any outcome but a lost worker), from task_prerun to task_postrun.",
    attributes=(TASK_NAME, QUEUE),
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
    description="Task messages received by the worker from the broker.",
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
    description="Tasks received and reserved by this worker but not yet started "
    "(prefetched, waiting for a pool process or an ETA).",
    attributes=(TASK_NAME, QUEUE),
)
TASK_FAILURES = MetricSpec(
    name="celery.task.failures",
    kind=InstrumentKind.COUNTER,
    unit="{task}",
    description="Task failures (the task_failure signal) by exception class name.",
    attributes=(TASK_NAME, QUEUE, EXCEPTION_TYPE),
)
SELF_OVERFLOW = MetricSpec(
    name="otel_celery_metrics.overflow",
    kind=InstrumentKind.COUNTER,
    unit="{measurement}",
    description="Measurements whose attribute value was replaced by the overflow value "
    "because a cardinality cap was reached (attribute: task_name, queue or series).",
    attributes=(ATTRIBUTE,),
    recorded_in="self",
)
SELF_DROPPED = MetricSpec(
    name="otel_celery_metrics.dropped",
    kind=InstrumentKind.COUNTER,
    unit="{measurement}",
    description="Measurements lost before recording, by reason "
    "(pool_buffer_full, undecodable, internal_error).",
    attributes=(REASON,),
    recorded_in="self",
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
    SELF_OVERFLOW,
    SELF_DROPPED,
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
        f"- Overflow value (task name, queue, or every attribute past the series cap): "
        f"`{OVERFLOW_VALUE}`.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_reference(), end="")
