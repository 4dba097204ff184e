"""A real ``celery beat`` under opentelemetry-instrument serves per-entry sends, lateness and
last-send time on its own /metrics."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import BIN, REPO, free_port, parse, producer, scrape, value, wait_for

pytestmark = pytest.mark.integration

SENDS = "celery_beat_sends_total"
LAST = "celery_beat_last_send_timestamp_seconds"
LATE = "celery_beat_lateness_seconds"
ENTRIES = ("every-second", "every-two-seconds")


def test_a_real_beat_reports_sends_lateness_and_last_send_per_entry(
    redis_url: str, queue: str
) -> None:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "TEST_BROKER_URL": redis_url, "TEST_QUEUE": queue, "PYTHONPATH": str(REPO),
        "OTEL_SERVICE_NAME": "tests-beat", "OTEL_METRICS_EXPORTER": "prometheus",
        "OTEL_TRACES_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none",
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": "celery,redis,urllib,urllib3,requests",
    })
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "beat.log")
        with log.open("w") as out:
            beat = subprocess.Popen(
                [str(BIN / "opentelemetry-instrument"), str(BIN / "celery"), "-A",
                 "tests.apps.beat_app", "beat", "--loglevel=INFO",
                 "-s", str(Path(tmp, "schedule")), "--pidfile", str(Path(tmp, "beat.pid"))],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            def sends(n: int) -> object:
                s = parse(scrape(port))
                return all(value(s, SENDS, schedule_entry=e) >= n for e in ENTRIES) and s

            first = wait_for(lambda: sends(2), timeout=30,
                             what=lambda: f"two sends of each entry\n{log.read_text()[-2000:]}")
            for e in ENTRIES:
                labels = {"schedule_entry": e, "task_name": "tests.ok"}
                count = value(first, SENDS, **labels)
                # Every send has a lateness point; beat keeps up, so each is small.
                assert value(first, f"{LATE}_count", **labels) == count
                assert value(first, f"{LATE}_sum", **labels) / count < 1.0
                assert time.time() - value(first, LAST, **labels) < 5
            # The every-second entry sends about twice as often as the other.
            s = wait_for(lambda: sends(4), timeout=30, what="four sends of each entry")
            assert value(s, LAST, schedule_entry="every-second") > value(
                first, LAST, schedule_entry="every-second")
            assert value(s, SENDS, schedule_entry="every-second") > value(
                s, SENDS, schedule_entry="every-two-seconds")
        finally:
            beat.terminate()
            beat.wait(20)
            with producer(redis_url).connection_for_write() as conn:
                conn.default_channel.queue_purge(queue)
