"""The queue-wait rule both ways in record by: from what moment a task waited, and for how long.

A task waits from the moment it could first have run to the moment a pool process accepted
it. That moment is, in this order:

- ``eta``: the task's ETA or countdown, when it is later than the other reference (a task
  due in an hour did not wait for the hour it was told to wait);
- ``publish``: the producer's publish time (our header in-process, the ``task-sent`` event
  in the exporter), when the producer is instrumented or sends events;
- ``received``: when a worker received the message, otherwise.

The ETA is compared with whichever of publish or receipt is the reference, so both ways in
label the same task the same way (the in-process side and the exporter used to disagree on
an ETA task whose producer sent no publish time). Waits are clamped at 0: producer and
worker clocks disagree by small amounts, and a negative wait means skew, not time travel.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "PUBLISHED_AT_HEADER",
    "RECEIVED_AT_FIELD",
    "eta_timestamp",
    "wait_reference",
    "wait_seconds",
]

#: Message header carrying the producer's wall-clock publish time (seconds since epoch).
PUBLISHED_AT_HEADER = "otel_celery_published_at"
#: Request field the worker's main process sets when a message is received (the
#: queue-wait reference when the producer is not instrumented).
RECEIVED_AT_FIELD = "otel_celery_received_at"


def eta_timestamp(eta: object) -> float | None:
    """An ETA as seconds since the epoch: a ``datetime`` (Celery's request) or an ISO 8601
    string (message headers and events); ``None`` when absent or unreadable."""
    if not eta:
        return None
    try:
        if isinstance(eta, datetime):
            return eta.timestamp()
        if isinstance(eta, str):
            return datetime.fromisoformat(eta).timestamp()
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return None


def wait_reference(
    published: float | None, received: float | None, eta: float | None
) -> tuple[float | None, str]:
    """(reference time, ``wait_from``) by the rule above; ``(None, "")`` when nothing is known."""
    if published is not None:
        reference, wait_from = published, "publish"
    elif received is not None:
        reference, wait_from = received, "received"
    else:
        return None, ""
    if eta is not None and eta > reference:
        return eta, "eta"
    return reference, wait_from


def wait_seconds(reference: float, started: float) -> float:
    """Seconds from ``reference`` to ``started``, clamped at 0 (clock skew)."""
    wait = started - reference
    return wait if wait > 0 else 0.0
