"""The Celery app the end-to-end bench runs workers on: one no-op task that counts itself.

Broker: ``BENCH_BROKER_URL`` (default Redis db 14). ``BENCH_RECIPE=1`` wires the
prometheus_client-in-signals recipe (``_recipe.py``) with one HTTP server per pool
child on a free port, as the recipe needs under prefork. Our instrumentation is not
referenced here: ``opentelemetry-instrument`` finds it through its entry point.
"""

from __future__ import annotations

import os
from typing import Any

import redis
from celery import Celery, signals

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")
QUEUE = "bench"
DONE_KEY = "bench:done"

app = Celery("bench_app", broker=BROKER_URL)
app.conf.update(
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_client: redis.Redis | None = None


@app.task(name="bench.noop")
def noop() -> None:
    # One INCR per task (a persistent connection per pool child) lets the driver see
    # progress without touching the queue; every mode pays it alike.
    global _client  # noqa: PLW0603
    if _client is None:
        _client = redis.Redis.from_url(BROKER_URL)
    _client.incr(DONE_KEY)


if os.environ.get("BENCH_EXTRA_IMPORT"):
    # A module to import into the worker, e.g. a monkeypatch to try a change to the
    # package without editing it (the profiling notes in README.md used this).
    import importlib

    importlib.import_module(os.environ["BENCH_EXTRA_IMPORT"])

if os.environ.get("BENCH_RECIPE") == "1":
    from _recipe import SignalRecipe

    recipe = SignalRecipe()
    recipe.connect()

    @signals.worker_process_init.connect(weak=False)
    def _serve_child_metrics(**_: Any) -> None:
        from prometheus_client import start_http_server

        # The recipe's fixed port would fail for the second child ("address already in
        # use"); a free port per child keeps the recipe's cost without that failure.
        start_http_server(0, addr="127.0.0.1", registry=recipe.registry)
