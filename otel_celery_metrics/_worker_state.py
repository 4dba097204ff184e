"""Saturation read from Celery's own worker state at collection time.

``celery.worker.state`` tracks, in the worker's main process, every request reserved
(received, prefetched or waiting for an ETA) and every request accepted by a pool
process. Reading it when a scrape or export collects costs nothing per task and is
exact for every pool: under prefork the main process learns of acceptance from the
children, so no measurement has to cross processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from otel_celery_metrics._recorder import AttrValues
from otel_celery_metrics._routing import delivered_queue


def _task_name(request: Any) -> str:
    # The registered task's name, as every other metric: ``request.name`` is the
    # message's shadow name when it has one (chosen per message, unbounded).
    return str(request.task.name)


def executing(default_queue: str) -> Iterator[tuple[float, AttrValues]]:
    """One (1, (task name, queue)) per task executing now."""
    from celery.worker import state

    for request in list(state.active_requests):
        yield 1.0, (_task_name(request), delivered_queue(request.delivery_info, default_queue))


def prefetched(default_queue: str) -> Iterator[tuple[float, AttrValues]]:
    """One (1, (task name, queue)) per task reserved but not yet accepted by a pool process."""
    from celery.worker import state

    active = set(state.active_requests)
    for request in list(state.reserved_requests):
        if request not in active:
            yield 1.0, (_task_name(request), delivered_queue(request.delivery_info, default_queue))
