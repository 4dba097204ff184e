from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.service import Exporter
from tests.exporter.support import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_exporter(clock: FakeClock):
    """An exporter that is built but never started: no thread, no port, no broker."""
    made: list[Exporter] = []

    def make(**overrides: object) -> Exporter:
        settings: dict[str, object] = {"broker_url": "redis://127.0.0.1:1/0", **overrides}
        config = ExporterConfig(**settings)  # type: ignore[arg-type]
        exporter = Exporter(config, registry=CollectorRegistry(), clock=clock)
        made.append(exporter)
        return exporter

    yield make
    for exporter in made:
        exporter.instruments.shutdown()
