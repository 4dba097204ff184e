"""The demo's Celery app: kombu's filesystem transport in a folder, so no broker server.

The folder comes from ``OTEL_CELERY_DEMO_DIR`` (set by the demo runner for both the
worker and the producer) and is read when the worker or producer creates the app.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery


def make_app(folder: str) -> Celery:
    messages = Path(folder) / "messages"
    processed = Path(folder) / "processed"
    messages.mkdir(parents=True, exist_ok=True)
    processed.mkdir(parents=True, exist_ok=True)
    app = Celery("demo")
    app.conf.update(
        broker_url="filesystem://",
        broker_transport_options={
            "data_folder_in": str(messages),
            "data_folder_out": str(messages),
            "processed_folder": str(processed),
            # Exchange bindings live here too, not in the current directory.
            "control_folder": str(Path(folder) / "control"),
            "polling_interval": 0.05,
        },
        # The filesystem transport has no fan-out exchange: no remote control.
        worker_enable_remote_control=False,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )

    @app.task(name="demo.resize_image")
    def resize_image(size: int) -> int:
        time.sleep(random.uniform(0.01, 0.2))  # noqa: S311 - demo jitter, not crypto
        return size // 2

    @app.task(name="demo.charge_card")
    def charge_card(amount: int) -> str:
        if amount % 4 == 0:
            msg = "card declined"
            raise ValueError(msg)
        return "ok"

    @app.task(name="demo.sync_inventory", bind=True, max_retries=3)
    def sync_inventory(self: Any, attempts_needed: int) -> str:
        if self.request.retries < attempts_needed:
            raise self.retry(countdown=0.1)
        return "synced"

    return app


app = make_app(
    os.environ.get("OTEL_CELERY_DEMO_DIR")
    or str(Path(tempfile.gettempdir()) / "otel-celery-metrics-demo")
)
