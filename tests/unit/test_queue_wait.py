"""The queue-wait rule both ways in record by (core/queue_wait.py), and the two ways in agree."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

import pytest

from otel_celery_metrics.core.queue_wait import (
    PUBLISHED_AT_HEADER,
    RECEIVED_AT_FIELD,
    eta_timestamp,
    wait_reference,
    wait_seconds,
)
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.worker.outcomes import TaskOutcomes


class _NoEmitter:
    """Nothing is refused in these cases: an emit would be a refusal counted."""

    def emit(self, *_args: object, **_kwargs: object) -> None:
        raise AssertionError("a refusal was counted")

T0 = 1_700_000_000.0

# (published, received, eta, started) -> (wait_from, seconds)
CASES = [
    ((T0, T0 + 1, None, T0 + 3), ("publish", 3.0)),
    ((None, T0 + 1, None, T0 + 3), ("received", 2.0)),
    ((T0, T0 + 1, T0 + 2, T0 + 3), ("eta", 1.0)),  # the ETA is later than publish
    ((T0, T0 + 1, T0 - 5, T0 + 3), ("publish", 3.0)),  # an ETA already past at publish
    # No publish time: the ETA is compared with the receipt (both ways in, since the rule
    # is one; the exporter once compared it with nothing and said "received").
    ((None, T0 + 1, T0 + 2.5, T0 + 3), ("eta", 0.5)),
    ((T0 + 10, None, None, T0 + 3), ("publish", 0.0)),  # clock skew: clamped at 0
]


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_the_rule(given: tuple[float | None, ...], expected: tuple[str, float]) -> None:
    published, received, eta, started = given
    reference, wait_from = wait_reference(published, received, eta)
    assert reference is not None and started is not None
    assert (wait_from, wait_seconds(reference, started)) == expected


def test_nothing_known_means_no_wait() -> None:
    assert wait_reference(None, None, T0) == (None, "")


def test_etas_are_read_from_datetimes_and_iso_text_and_nothing_else() -> None:
    when = datetime.fromtimestamp(T0, tz=timezone.utc)
    assert eta_timestamp(when) == T0
    assert eta_timestamp(when.isoformat()) == T0
    for bad in ("tomorrow", 12345, b"2023-11-14", None, ""):
        assert eta_timestamp(bad) is None


@pytest.mark.parametrize(("given", "expected"), CASES)
def test_the_in_process_side_records_by_the_rule(
    given: tuple[float | None, ...], expected: tuple[str, float]
) -> None:
    published, received, eta, started = given
    fields = {}
    if published is not None:
        fields[PUBLISHED_AT_HEADER] = published
    if received is not None:
        fields[RECEIVED_AT_FIELD] = received
    request = SimpleNamespace(
        request_dict=fields, time_start=started,
        eta=datetime.fromtimestamp(eta, tz=timezone.utc).isoformat() if eta else None,
    )
    outcomes = TaskOutcomes(_NoEmitter(), FailureLog())  # type: ignore[arg-type]
    wait = outcomes._wait(request, "t")
    assert wait is not None
    wait_from, seconds = wait
    assert (wait_from, seconds) == (expected[0], pytest.approx(expected[1]))
