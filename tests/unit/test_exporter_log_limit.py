"""While the Collector is down: one exporter log line per export interval, not per retry."""

from __future__ import annotations

import logging

import pytest

from otel_celery_metrics._sdk_setup import (
    OTLP_EXPORTER_LOGGERS,
    OncePerInterval,
    limit_exporter_logs,
)


def test_one_warning_per_logger_per_interval() -> None:
    now = [100.0]
    log_filter = OncePerInterval(60.0, clock=lambda: now[0])

    def record(name: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, "export failed", None, None)

    assert log_filter.filter(record("a"))
    assert not log_filter.filter(record("a", logging.ERROR))  # same interval: suppressed
    assert log_filter.filter(record("b"))  # another exporter has its own budget
    assert log_filter.filter(record("a", logging.INFO))  # below warning: untouched
    now[0] += 60.0
    assert log_filter.filter(record("a"))  # next interval: one more line


def test_installing_twice_keeps_one_filter(caplog: pytest.LogCaptureFixture) -> None:
    limit_exporter_logs(30.0)
    limit_exporter_logs(30.0)
    logger = logging.getLogger(OTLP_EXPORTER_LOGGERS[0])
    try:
        assert sum(isinstance(f, OncePerInterval) for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=logger.name):
            for _ in range(5):
                logger.warning("Transient error while exporting, retrying")
        assert len(caplog.records) == 1
    finally:
        for name in OTLP_EXPORTER_LOGGERS:
            for f in list(logging.getLogger(name).filters):
                logging.getLogger(name).removeFilter(f)
