"""A prefork worker behind a real fault proxy (Toxiproxy) to the real Collector (OTLP).

Latency, a bandwidth limit, a reset and a half-open hang longer than the export interval,
each then removed (see :mod:`tests.integration.collector_faults`): the worker never
crashes and keeps running tasks, a reset and a hang are logged as failed exports, and
after each cure the Collector's prometheus exporter serves the exact task total
(cumulative temporality: the first export that gets through carries everything).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault_matrix import record
from tests.integration.collector_faults import EXPORT_TIMEOUT_S, INTERVAL_MS, run_faults

pytestmark = pytest.mark.integration


def test_a_worker_behind_latency_bandwidth_a_reset_and_a_hang_to_the_collector_loses_nothing(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    outcomes = run_faults(redis_url, queue, tmp_path)
    by_fault = {o.fault.split()[0]: o for o in outcomes}
    for outcome in outcomes:
        print(f"collector {outcome.fault}: detected after {outcome.detected_after}, "
              f"recovered {outcome.recovered_after:.1f}s after the cure, lost {outcome.lost}")
        assert outcome.worker_alive, outcome
        assert outcome.lost == 0, outcome
        record(outcome.fault,
               "instrumented prefork worker → Collector (OTLP/HTTP)",
               outcome.detected_after if outcome.detected_after is not None
               else "not an outage (no export failed)",
               f"{outcome.recovered_after:.1f} s (exact totals at the Collector)",
               "nothing (cumulative: the first export through carries every count)")
    # 500 ms each way fits in the export timeout: no export fails.
    assert by_fault["latency"].detected_after is None, by_fault["latency"]
    # Refused and hung exports are logged; a hang only once the export timeout has passed.
    reset, hang = by_fault["reset"], by_fault["half-open"]
    assert reset.detected_after is not None, reset
    assert hang.detected_after is not None, hang
    assert hang.detected_after >= EXPORT_TIMEOUT_S - 0.5, hang
    # Back within a few export intervals plus the timeout of the export hung at the cure.
    bound = EXPORT_TIMEOUT_S + 6 * INTERVAL_MS / 1000 + 5  # slack for a loaded machine
    for outcome in (reset, hang):
        assert outcome.recovered_after < bound, outcome
