"""`celery events` (a monitor, as Flower is) under opentelemetry-instrument: a long-running
process that keeps the exporters its environment selects, unlike short-lived commands."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import (
    BIN,
    REPO,
    Samples,
    free_port,
    instrumented_env,
    parse,
    scrape,
    value,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_celery_events_serves_the_metrics_its_environment_asks_for(redis_url: str) -> None:
    port = free_port()
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "celery"), "-A",
           "tests.apps.tasks_app", "events", "--dump"]
    with tempfile.NamedTemporaryFile(prefix="celery-events-", suffix=".log") as log:
        env = instrumented_env(redis_url, port, "tests-monitor")
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            def served() -> Samples | None:
                if proc.poll() is not None:
                    text = Path(log.name).read_text(errors="replace")
                    raise AssertionError(f"celery events exited {proc.returncode}:\n{text}")
                try:
                    return parse(scrape(port))
                except OSError:
                    return None

            samples = wait_for(served, timeout=40, what="celery events' /metrics")
            # Its own identity: a monitor is not a worker and does not borrow one.
            assert value(samples, "target_info", service_name="tests-monitor") == 1
            assert proc.poll() is None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
