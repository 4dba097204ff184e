"""The Celery application of the autoscaling tests: one task that records each run.

``autoscale.work(seconds)`` pushes its task id to ``<AUTOSCALE_RUNS_KEY>:started`` when it
starts and to ``:done`` when it ends (Redis at AUTOSCALE_RUNS_URL), so a test can tell that
every task ran exactly once and that none was cut short. AUTOSCALE_ACKS_LATE=1 and
AUTOSCALE_PREFETCH set acks_late and the prefetch multiplier (the hoarding scenario).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

_broker = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15")
app = Celery("autoscale_app", broker=_broker)
app.conf.update(
    task_acks_late=os.environ.get("AUTOSCALE_ACKS_LATE") == "1",
    worker_prefetch_multiplier=int(os.environ.get("AUTOSCALE_PREFETCH", "1")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
if _broker.startswith("redis"):
    # Priority sub-lists consumed in priority order (the priority-backlog scenario).
    app.conf.broker_transport_options = {"queue_order_strategy": "priority"}

#: One client per pool process, made on first use (after the fork).
_clients: dict[int, Any] = {}


def _runs() -> Any:
    pid = os.getpid()
    if pid not in _clients:
        import redis

        _clients[pid] = redis.Redis.from_url(os.environ["AUTOSCALE_RUNS_URL"])
    return _clients[pid]


@app.task(name="autoscale.work", bind=True)
def work(self: Any, seconds: float) -> None:
    key = os.environ.get("AUTOSCALE_RUNS_KEY", "autoscale")
    _runs().rpush(f"{key}:started", self.request.id)
    time.sleep(seconds)
    _runs().rpush(f"{key}:done", self.request.id)
