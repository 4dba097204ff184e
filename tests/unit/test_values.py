"""The one check of numbers from outside the process (core/values.py), shared by the
in-process instrumentor and the exporter: whatever comes in, a finite number in range or
a refusal with a reason comes out, and never the value in full in the detail."""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_celery_metrics.core import values
from otel_celery_metrics.core.values import Bounds, Refusal

B = Bounds(max_queue_wait=100.0, max_runtime=50.0, clock_skew_tolerance=10.0)
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300),
    st.lists(st.integers(), max_size=3), st.just(10**400),
)


@given(started=ANYTHING, reference=ANYTHING)
def test_a_queue_wait_is_a_finite_number_in_range_or_a_refusal(
    started: object, reference: object
) -> None:
    result = values.queue_wait(started, reference, B)
    if isinstance(result, Refusal):
        assert result.reason in values.REASONS
        assert len(result.detail) < 200
    else:
        assert type(result) is float
        assert 0.0 <= result <= B.max_queue_wait


@given(ANYTHING)
def test_runtimes_lateness_counts_and_timestamps_are_finite_or_refused(value: object) -> None:
    for check in (lambda v: values.runtime(v, B), lambda v: values.lateness(v, B),
                  values.timestamp, values.count):
        result = check(value)
        assert result is None or isinstance(result, Refusal) or math.isfinite(result)


@pytest.mark.parametrize(
    ("reference", "reason"),
    [
        (True, "invalid_time"), (float("nan"), "invalid_time"), (float("-inf"), "invalid_time"),
        ("1000", "invalid_time"), ([1000], "invalid_time"), (10**400, "invalid_time"),
        (-1e300, "implausible_time"),  # a 1e300 s wait
        (1015.0, "implausible_time"),  # 15 s in the future: beyond the 10 s tolerance
        (800.0, "implausible_time"),  # a 200 s wait: beyond the 100 s maximum
    ],
)
def test_what_is_refused_and_why(reference: object, reason: str) -> None:
    result = values.queue_wait(1000.0, reference, B)
    assert isinstance(result, Refusal)
    assert result.reason == reason


def test_small_skew_is_clamped_and_ints_are_times() -> None:
    assert values.queue_wait(1000.0, 1005.0, B) == 0.0
    assert values.queue_wait(1000, 990, B) == 10.0
    assert values.elapsed(10.0, 9.0, B) == Refusal(
        "implausible_time", "the runtime is negative (-1 s)")
    assert values.count(3.0) == 3
    assert isinstance(values.count(-1), Refusal)
    assert isinstance(values.count(2.5), Refusal)
    assert values.eta(datetime(2030, 1, 1, tzinfo=UTC)) == 1893456000.0
    assert values.eta("2030-01-01T00:00:00+00:00") == 1893456000.0
    assert isinstance(values.eta("soon"), Refusal)
    assert values.eta(None) is None


def test_a_refusal_is_counted_every_time_and_logged_once_per_reason_and_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted: list[str] = []
    log = values.RefusalLog(counted.append, logging.getLogger("t"), 'x{{reason="{reason}"}}')
    secret = "s3cret-" * 50
    refusal = values.queue_wait(1.0, secret, B)
    assert isinstance(refusal, Refusal)
    for name in ("a", "a", "b"):
        log.refused(refusal, name, "queue wait")
    assert counted == ["invalid_time"] * 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert 'x{reason="invalid_time"}' in lines[0]
    assert "a str of length 350" in lines[0]
    assert "s3cret" not in " ".join(lines)
