"""While the Collector is down: one exporter log line per failed export, not per retry."""

from __future__ import annotations

import contextlib
import logging

import pytest
from opentelemetry.sdk.metrics import MeterProvider

from otel_celery_metrics.sdk_adapter import (
    OTLP_EXPORTER_LOGGERS,
    OneLinePerFailedExport,
    SdkAdapter,
)


def _record(name: str, level: int, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_retries_fold_into_the_final_error_with_their_reason() -> None:
    log_filter = OneLinePerFailedExport()
    retry = "Transient error %s encountered while exporting %s batch, retrying in %.2fs."
    assert not log_filter.filter(_record("a", logging.WARNING, retry, "refused", "metrics", 1.0))
    assert not log_filter.filter(_record("a", logging.WARNING, retry, "reset", "metrics", 2.0))
    final = _record("a", logging.ERROR, "Failed to export %s batch due to timeout.", "metrics")
    assert log_filter.filter(final)
    line = final.getMessage()
    assert line.startswith("Failed to export metrics batch due to timeout.")
    assert "Last retry: Transient error reset" in line  # the reason is on the one line
    # Another logger's failure is its own; other records pass untouched.
    other = _record("b", logging.ERROR, "Failed to export %s batch", "metrics")
    assert log_filter.filter(other)
    assert other.getMessage() == "Failed to export metrics batch"
    assert log_filter.filter(_record("a", logging.WARNING, "Exporter already shutdown"))


def _adapter(provider: MeterProvider) -> SdkAdapter:
    adapter = SdkAdapter(provider, "t", "0")
    adapter.apply(lambda _reset: [], lambda: None, contextlib.nullcontext, scope_labels=False)
    return adapter


def test_two_instrumentations_keep_one_filter_and_undo_removes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in OTLP_EXPORTER_LOGGERS:  # left by other tests' adapters
        for f in list(logging.getLogger(name).filters):
            logging.getLogger(name).removeFilter(f)
    provider = MeterProvider()
    first, second = _adapter(provider), _adapter(MeterProvider())
    logger = logging.getLogger(OTLP_EXPORTER_LOGGERS[0])
    try:
        assert sum(isinstance(f, OneLinePerFailedExport) for f in logger.filters) == 1
        with caplog.at_level(logging.WARNING, logger=logger.name):
            for _ in range(5):
                logger.warning("Transient error refused encountered, retrying")
            logger.error("Failed to export metrics batch")
        assert [r.levelno for r in caplog.records] == [logging.ERROR]
        second.undo()
        first.undo()
        assert not any(isinstance(f, OneLinePerFailedExport) for f in logger.filters)
    finally:
        for name in OTLP_EXPORTER_LOGGERS:
            for f in list(logging.getLogger(name).filters):
                logging.getLogger(name).removeFilter(f)
