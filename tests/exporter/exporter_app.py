"""The Celery app the exporter's integration tests run real workers with (``-E``).

Broker and default queue come from EXPORTER_TEST_BROKER and EXPORTER_TEST_QUEUE.
"""

from __future__ import annotations

import os
import select
import time

from celery import Celery
from celery.exceptions import Reject

app = Celery(
    "exporter_app", broker=os.environ.get("EXPORTER_TEST_BROKER", "redis://127.0.0.1:6379/13")
)
app.conf.update(
    task_default_queue=os.environ.get("EXPORTER_TEST_QUEUE", "celery"),
    task_send_sent_event=os.environ.get("EXPORTER_TEST_SENT_EVENTS", "1") == "1",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_queue_max_priority=10,
    task_default_priority=5,
)
if os.environ.get("EXPORTER_TEST_KEYPREFIX"):
    # kombu's global_keyprefix: every Redis key and pub/sub channel of this app is prefixed.
    app.conf.broker_transport_options = {"global_keyprefix": os.environ["EXPORTER_TEST_KEYPREFIX"]}


@app.task(name="exp.ok")
def ok(x: int = 0) -> int:
    return x


@app.task(name="exp.fail")
def fail() -> None:
    raise KeyError("secret message that must not become a label")


@app.task(name="exp.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="exp.nap")
def nap(seconds: float, fail: bool = False) -> None:
    """Sleeps with ``select()`` (under libfaketime ``time.sleep()`` fails with EINVAL), so
    a task can run across a clock step; ``fail`` raises at the end."""
    select.select([], [], [], seconds)
    if fail:
        raise TimeoutError("slept and failed")


@app.task(name="exp.retry", bind=True, max_retries=3)
def retry_once(self) -> str:
    if self.request.retries < 1:
        raise self.retry(countdown=0)
    return "done"


@app.task(name="exp.reject")
def reject() -> None:
    raise Reject("no", requeue=False)
