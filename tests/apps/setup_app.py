"""The test app configured in code with ``setup_metrics()`` (no opentelemetry-instrument)."""

from __future__ import annotations

import os
from typing import Any

from celery.signals import celeryd_init

from otel_celery_metrics import setup_metrics
from tests.apps.tasks_app import app

__all__ = ["app"]


@celeryd_init.connect
def _metrics(**_: Any) -> None:
    # The worker's main process, before the pool forks: the documented place.
    setup_metrics(
        "prometheus",
        service_name="tests-in-code",
        prometheus_host="127.0.0.1",
        prometheus_port=int(os.environ["TEST_METRICS_PORT"]),
    )
