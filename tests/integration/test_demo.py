"""The README's first command: the demo runs a real instrumented worker and shows its tasks."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import BIN, free_port

pytestmark = pytest.mark.integration


def test_demo_shows_every_task_by_state_with_publish_based_queue_wait() -> None:
    port = free_port()
    result = subprocess.run(
        [str(BIN / "otel-celery-metrics-demo"), "--port", str(port), "--tasks", "12"],
        capture_output=True, text=True, timeout=150, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    # 12 tasks: 4 resize (success), 4 charges (i=1,4,7,10: one declined), 4 syncs retried once.
    assert "expected {'SUCCESS': 11, 'FAILURE': 1, 'RETRY': 4}" in out
    assert "/metrics shows {'SUCCESS': 11.0, 'FAILURE': 1.0, 'RETRY': 4.0}" in out
    # The demo's producer is instrumented: queue wait counts from the publish time.
    assert 'wait_from="publish"' in out
    assert 'celery_task_failures_total{exception_type="ValueError"' in out
