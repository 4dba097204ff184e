"""The comparison baseline: prometheus_client collectors updated from Celery task signals.

Our own rendering of the common "metrics from signals" recipe (the seed guide's step 2b):
task_prerun stores a start time per task id, task_postrun observes a
``Histogram(task_name, queue)`` and increments a ``Counter(task_name, queue, state)``,
task_failure increments the counter with state FAILURE. Under prefork every pool child
records into its own copy and would need its own HTTP port; nothing crosses processes.

Like the recipe it renders, a failed task is counted twice (``task_failure`` adds a
FAILURE and ``task_postrun`` adds its state, FAILURE again); kept as is, since what is
compared is the recipe's cost.

Collectors go into a private registry (not the global one) so the bench can create them
in any process without clashing with other collectors.
"""

from __future__ import annotations

import time
from typing import Any


class SignalRecipe:
    """The recipe's three receivers and two collectors. :meth:`connect` wires them."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.runtime = Histogram(
            "recipe_task_runtime_seconds",
            "Task execution time in seconds",
            ["task_name", "queue"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.total = Counter(
            "recipe_tasks_total",
            "Tasks by terminal state",
            ["task_name", "queue", "state"],
            registry=self.registry,
        )
        self._started: dict[Any, float] = {}

    def on_prerun(self, task_id: Any = None, task: Any = None, **_: Any) -> None:
        self._started[task_id] = time.perf_counter()

    def on_postrun(
        self, task_id: Any = None, task: Any = None, state: Any = None, **_: Any
    ) -> None:
        started = self._started.pop(task_id, None)
        delivery_info = getattr(task.request, "delivery_info", None) or {}
        queue = delivery_info.get("routing_key", "default")
        if started is not None:
            self.runtime.labels(task.name, queue).observe(time.perf_counter() - started)
        self.total.labels(task.name, queue, state or "UNKNOWN").inc()

    def on_failure(self, task_id: Any = None, sender: Any = None, **_: Any) -> None:
        delivery_info = getattr(sender.request, "delivery_info", None) or {}
        queue = delivery_info.get("routing_key", "default")
        self.total.labels(sender.name, queue, "FAILURE").inc()

    def connect(self) -> None:
        from celery import signals

        signals.task_prerun.connect(self.on_prerun, weak=False)
        signals.task_postrun.connect(self.on_postrun, weak=False)
        signals.task_failure.connect(self.on_failure, weak=False)

    def count(self) -> float:
        """Sum of the task counter over every label set (a correctness check)."""
        total = 0.0
        for metric in self.registry.collect():
            for sample in metric.samples:
                if sample.name == "recipe_tasks_total":
                    total += sample.value
        return total


class OtelPort(SignalRecipe):
    """The same receivers ported straightforwardly to OpenTelemetry.

    A counter and a histogram from ``meter``, recorded directly in the receivers, with
    attribute dicts built per call, as a first port would.
    """

    def __init__(self, meter: Any) -> None:
        # No prometheus_client collectors: the SDK's reader does the exposition.
        self._started: dict[Any, float] = {}
        self.otel_runtime = meter.create_histogram(
            "port.task.runtime",
            unit="s",
            description="Task execution time",
            explicit_bucket_boundaries_advisory=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.otel_total = meter.create_counter(
            "port.tasks", unit="{task}", description="Tasks by terminal state"
        )

    def on_postrun(
        self, task_id: Any = None, task: Any = None, state: Any = None, **_: Any
    ) -> None:
        started = self._started.pop(task_id, None)
        delivery_info = getattr(task.request, "delivery_info", None) or {}
        queue = delivery_info.get("routing_key", "default")
        if started is not None:
            self.otel_runtime.record(
                time.perf_counter() - started, {"task_name": task.name, "queue": queue}
            )
        attributes = {"task_name": task.name, "queue": queue, "state": state or "UNKNOWN"}
        self.otel_total.add(1, attributes)

    def on_failure(self, task_id: Any = None, sender: Any = None, **_: Any) -> None:
        delivery_info = getattr(sender.request, "delivery_info", None) or {}
        queue = delivery_info.get("routing_key", "default")
        self.otel_total.add(1, {"task_name": sender.name, "queue": queue, "state": "FAILURE"})
