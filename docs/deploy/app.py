"""A minimal Celery app for the deployment examples (docker-compose.yml, kubernetes.yaml).

Nothing in it knows about metrics or tracing: opentelemetry-instrument adds both.
"""

import os
import random
import time

from celery import Celery

app = Celery("app", broker=os.environ.get("CELERY_BROKER_URL", "redis://redis:6379/0"))


@app.task(name="app.resize_image")
def resize_image(size: int) -> int:
    time.sleep(random.uniform(0.05, 0.5))  # noqa: S311 - demo workload, not crypto
    return size // 2


@app.task(name="app.charge_card", bind=True, max_retries=3)
def charge_card(self, amount: int) -> int:  # type: ignore[no-untyped-def]
    if random.random() < 0.2:  # noqa: S311 - demo workload, not crypto
        raise self.retry(countdown=1)
    return amount
