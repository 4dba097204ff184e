"""Numbers from outside the process, checked in one place before anything records them.

Times and counts that other processes send us (a producer's publish-time header, a
message's ETA, the timestamps and runtimes in Celery events, a worker's ``active`` count)
and those a schedule computes (beat's lateness) can be anything: ``NaN``, ``-Infinity``,
``-1e300``, ``true``, a string, a list, or a real time from a clock that is wrong. One such
value added to a histogram's sum poisons that series until the process restarts (``+Inf``
stays ``+Inf``), so every one of them passes through the functions here, which both ways
in use (the in-process instrumentor and the standalone exporter):

- a value that is not a finite real number (``bool`` included, though Python counts it as
  an ``int``) is refused as ``invalid_time`` (a time or duration) or ``invalid_number`` (a
  count);
- a finite duration beyond a configurable bound is refused as ``implausible_time``: a
  queue wait longer than ``max_queue_wait``, a runtime longer than ``max_runtime``, a
  reference time further in the future than ``clock_skew_tolerance`` (the producer's clock
  is ahead of the worker's), a runtime that runs backwards (the clock stepped back);
- a small negative wait (within the tolerance) is clock skew, not time travel, and is
  clamped to 0 as before.

A function returns the checked float (or int, or None for an absent optional field) or a
:class:`Refusal`: never raises. The callers count each refusal in their dropped
self-metric and let :class:`RefusalLog` log it once per reason and task name; the task's
outcome is counted all the same. Log lines describe a refused value (its type, or a
number to six digits), never echo it in full: it is user data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

#: Not a finite real number where a time or duration was expected.
INVALID_TIME = "invalid_time"
#: A finite time beyond a bound (see :class:`Bounds`).
IMPLAUSIBLE_TIME = "implausible_time"
#: Not a finite, non-negative whole number where a count was expected.
INVALID_NUMBER = "invalid_number"
#: Every reason a value is refused, in the order the self-metrics start them at 0.
REASONS: tuple[str, ...] = (INVALID_TIME, IMPLAUSIBLE_TIME, INVALID_NUMBER)

DEFAULT_MAX_QUEUE_WAIT = 7 * 86_400.0
DEFAULT_MAX_RUNTIME = 7 * 86_400.0
#: Five minutes, as Kerberos allows by default: NTP-synchronised hosts are far closer,
#: and a producer further ahead than this has a clock that is wrong.
DEFAULT_CLOCK_SKEW_TOLERANCE = 300.0

_DETAIL_LENGTH = 40


@dataclass(frozen=True, slots=True)
class Bounds:
    """The plausible range of durations, in seconds (each > 0; the settings check that)."""

    #: The longest queue wait (or beat lateness) recorded.
    max_queue_wait: float = DEFAULT_MAX_QUEUE_WAIT
    #: The longest task runtime recorded.
    max_runtime: float = DEFAULT_MAX_RUNTIME
    #: How far a reference time (publish, ETA, receipt) may lie in the future of the time
    #: the task started, by the clocks that stamped them, and still count as a wait of 0.
    clock_skew_tolerance: float = DEFAULT_CLOCK_SKEW_TOLERANCE


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a value was not recorded: a reason (the self-metric's label) and a detail for
    the log line that never holds the value in full."""

    reason: str
    detail: str


def finite(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (``bool`` is not), else None."""
    if value.__class__ is float:
        return value if math.isfinite(value) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError):  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def describe(value: object) -> str:
    """A short description of a refused value for a log line: never the value in full."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | float):
        try:
            return f"{float(value):.6g}"
        except OverflowError:  # an int too large for a float
            return f"an integer of {value.bit_length()} bits"  # type: ignore[union-attr]
    if isinstance(value, str | bytes):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"a {type(value).__name__}"[:_DETAIL_LENGTH]


def queue_wait(
    started: object, reference: object, bounds: Bounds, what: str = "reference time"
) -> float | Refusal:
    """Seconds from ``reference`` (publish, ETA or receipt) to ``started``, or why not.

    ``what`` names the reference in the refusal's detail. A reference that is itself a
    :class:`Refusal` (an ETA that did not parse) is handed back as it is.
    """
    # The per-task hot path in the worker's main process: two floats in range return
    # here. NaN and the infinities fail the chained comparison, so they fall through.
    if started.__class__ is float and reference.__class__ is float:
        seconds = started - reference
        if -bounds.clock_skew_tolerance <= seconds <= bounds.max_queue_wait:
            return seconds if seconds > 0.0 else 0.0
    return _checked_wait(started, reference, bounds, what)


def _checked_wait(
    started: object, reference: object, bounds: Bounds, what: str
) -> float | Refusal:
    """:func:`queue_wait` for every value its fast path does not take."""
    if isinstance(reference, Refusal):
        return reference
    begin = finite(reference)
    if begin is None:
        return Refusal(INVALID_TIME, f"the {what} is {describe(reference)}, not a finite time")
    end = finite(started)
    if end is None:
        return Refusal(INVALID_TIME, f"the start time is {describe(started)}, not a finite time")
    seconds = end - begin
    if not math.isfinite(seconds):
        seconds = math.copysign(math.inf, seconds)
    if seconds < -bounds.clock_skew_tolerance:
        return Refusal(
            IMPLAUSIBLE_TIME,
            f"the {what} is {-seconds:.6g} s after the task started, beyond the clock-skew "
            f"tolerance of {bounds.clock_skew_tolerance:g} s",
        )
    if seconds > bounds.max_queue_wait:
        return Refusal(
            IMPLAUSIBLE_TIME,
            f"the wait from the {what} is {seconds:.6g} s, beyond the maximum queue wait of "
            f"{bounds.max_queue_wait:g} s",
        )
    return seconds if seconds > 0.0 else 0.0


def runtime(seconds: object, bounds: Bounds) -> float | Refusal:
    """A runtime as a worker reports it (an event's ``runtime``), or why not."""
    value = finite(seconds)
    if value is None:
        return Refusal(INVALID_TIME, f"the runtime is {describe(seconds)}, not a finite duration")
    if value < 0.0:
        return Refusal(IMPLAUSIBLE_TIME, f"the runtime is negative ({value:.6g} s)")
    if value > bounds.max_runtime:
        return Refusal(
            IMPLAUSIBLE_TIME,
            f"the runtime is {value:.6g} s, beyond the maximum runtime of "
            f"{bounds.max_runtime:g} s",
        )
    return value


def elapsed(start: object, end: object, bounds: Bounds) -> float | Refusal:
    """The runtime between two timestamps of one host's clock, or why not (a clock that
    stepped back between them gives a negative one)."""
    begin, finish = finite(start), finite(end)
    if begin is None or finish is None:
        bad = start if begin is None else end
        return Refusal(INVALID_TIME, f"a task timestamp is {describe(bad)}, not a finite time")
    return runtime(finish - begin, bounds)


def lateness(seconds: object, bounds: Bounds) -> float | Refusal:
    """How late a scheduled send went out (>= 0; early counts as 0), or why not."""
    value = finite(seconds)
    if value is None:
        return Refusal(INVALID_TIME, f"the lateness is {describe(seconds)}, not a finite duration")
    if value > bounds.max_queue_wait:
        return Refusal(
            IMPLAUSIBLE_TIME,
            f"the lateness is {value:.6g} s, beyond the maximum queue wait of "
            f"{bounds.max_queue_wait:g} s",
        )
    return value if value > 0.0 else 0.0


def timestamp(value: object) -> float | Refusal | None:
    """An optional time field (seconds since the epoch): None when absent."""
    if value is None:
        return None
    checked = finite(value)
    if checked is None:
        return Refusal(INVALID_TIME, f"a timestamp is {describe(value)}, not a finite time")
    return checked


def eta(value: object) -> float | Refusal | None:
    """A task's ETA (a datetime, or ISO 8601 text as messages and events carry it) as
    seconds since the epoch; None when absent. Naive times are local, as Celery's are."""
    if value is None or value == "":
        return None
    try:
        if isinstance(value, datetime):
            at = value.timestamp()
        elif isinstance(value, str):
            at = datetime.fromisoformat(value).timestamp()
        else:
            return Refusal(INVALID_TIME, f"the ETA is {describe(value)}, not an ISO 8601 time")
    except (ValueError, OverflowError, OSError):
        return Refusal(INVALID_TIME, f"the ETA is {describe(value)}, not an ISO 8601 time")
    return at


def count(value: object) -> int | Refusal | None:
    """An optional count field (a worker's ``active``, ``processed``): None when absent."""
    if value is None:
        return None
    number = finite(value)
    if number is None or number < 0 or not number.is_integer():
        return Refusal(INVALID_NUMBER, f"a count is {describe(value)}, not a whole number >= 0")
    return int(number)


class RefusalLog:
    """Counts every refusal (``count(reason)``) and logs the first of each (reason, task
    name) once, naming where it is counted (``counted_in``, with ``{reason}``).

    Bounded: past ``limit`` distinct pairs, new ones are only counted (one line says so).
    Not locked: two threads refusing the same pair at once may log it twice, no more.
    """

    def __init__(
        self,
        count: Callable[[str], None],
        logger: logging.Logger,
        counted_in: str,
        limit: int = 1000,
    ) -> None:
        self._count = count
        self._logger = logger
        self._counted_in = counted_in
        self._limit = limit
        self._logged: set[tuple[str, str]] = set()

    def refused(
        self, refusal: Refusal, name: str, measurement: str, of: str = "task"
    ) -> None:
        """``measurement`` (e.g. "queue wait") of the ``of`` (task, worker) ``name`` was
        refused: counted, and logged if it is the first of its reason for ``name``."""
        self._count(refusal.reason)
        key = (refusal.reason, name)
        if key in self._logged:
            return
        if len(self._logged) >= self._limit:
            if len(self._logged) == self._limit:
                self._logged.add(("", ""))
                self._logger.warning(
                    "otel-celery-metrics: refused values of %d tasks logged; later ones are "
                    "only counted", self._limit,
                )
            return
        self._logged.add(key)
        self._logger.warning(
            "otel-celery-metrics: the %s of %s %s was not recorded (%s: %s); everything "
            "else is counted as usual. Counted in %s, logged once per reason and %s",
            measurement, of, name[:200], refusal.reason, refusal.detail,
            self._counted_in.format(reason=refusal.reason), of,
        )
