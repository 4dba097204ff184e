"""danihodovic/celery-exporter's metric and label names, for ``--danihodovic-names``.

Users of that exporter keep their dashboards and alerts: with the switch on, the
per-event task counters are published under its names and labels (``name``,
``hostname``, ``queue_name``, ``exception``) instead of the seed's, together with its
``celery_task_runtime`` histogram and its queue gauges. Everything else (the unified
series, our queue and self-metrics) is published in both modes; no name collides.
"""

from __future__ import annotations

from otel_celery_metrics.core import metric_table as mt

#: Our per-event counter -> its name there (the Prometheus exporter adds ``_total``).
COUNTER_NAMES: dict[str, str] = {
    mt.EVENTS_TASK_SENT.name: "celery_task_sent",
    mt.EVENTS_TASK_RECEIVED.name: "celery_task_received",
    mt.EVENTS_TASK_STARTED.name: "celery_task_started",
    mt.EVENTS_TASK_SUCCEEDED.name: "celery_task_succeeded",
    mt.EVENTS_TASK_FAILED.name: "celery_task_failed",
    mt.EVENTS_TASK_RETRIED.name: "celery_task_retried",
    mt.EVENTS_TASK_REJECTED.name: "celery_task_rejected",
    mt.EVENTS_TASK_REVOKED.name: "celery_task_revoked",
}
#: Label names of a per-event key (task name, queue, hostname[, exception]) there.
TASK_LABELS = ("name", "queue_name", "hostname")
FAILED_LABELS = ("name", "queue_name", "hostname", "exception")
RUNTIME_HISTOGRAM = "celery_task_runtime"
#: Queue gauges there, all labelled ``queue_name``.
QUEUE_LENGTH = "celery_queue_length"
ACTIVE_CONSUMERS = "celery_active_consumer_count"
ACTIVE_WORKERS = "celery_active_worker_count"
ACTIVE_PROCESSES = "celery_active_process_count"
QUEUE_LABEL = "queue_name"
# celery_worker_up{hostname} and celery_worker_tasks_active{hostname} are ours too.
