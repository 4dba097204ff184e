"""A Celery app with a schedule of a few seconds, for a real ``celery beat`` in the tests.

The broker comes from TEST_BROKER_URL, the queue the sends go to from TEST_QUEUE (no
worker consumes it: beat's sends are what is measured).
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("beat_app", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15"))
_queue = os.environ.get("TEST_QUEUE", "celery")
app.conf.update(
    broker_connection_retry_on_startup=True,
    beat_schedule={
        "every-second": {"task": "tests.ok", "schedule": 1.0, "options": {"queue": _queue}},
        "every-two-seconds": {
            "task": "tests.ok", "schedule": 2.0, "args": (2,), "options": {"queue": _queue},
        },
    },
)
