"""A worker's /metrics address (one per celery multi node) and serving once a busy port frees."""

from __future__ import annotations

import errno
import logging
from collections.abc import Iterator

import pytest

from otel_celery_metrics.endpoint.server import (
    MULTI_MARKER,
    Endpoint,
    EndpointError,
    MetricsServer,
    node_number,
    plan_endpoint,
)

BASE = {"OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0", "OTEL_EXPORTER_PROMETHEUS_PORT": "9808"}
MULTI = {**BASE, MULTI_MARKER: "1"}


def test_a_worker_serves_on_the_configured_address_or_the_exporters_defaults() -> None:
    assert plan_endpoint(BASE, "celery2@box") == Endpoint(
        "0.0.0.0", 9808, None, "OTEL_EXPORTER_PROMETHEUS_PORT=9808"
    )
    assert (plan_endpoint({}, None).host, plan_endpoint({}, None).port) == ("localhost", 9464)


@pytest.mark.parametrize(
    ("nodename", "port"),
    [("celery1@box", 9808), ("celery2@box", 9809), ("celery3@box", 9810),
     ("worker12@box", 9819), ("image@box", 9808), ("celery0@box", 9808)],
)
def test_a_celery_multi_node_serves_on_the_port_plus_its_number_minus_one(
    nodename: str, port: int
) -> None:
    endpoint = plan_endpoint(MULTI, nodename)
    assert endpoint.port == port
    assert endpoint.node == nodename
    assert nodename in endpoint.where()
    assert "OTEL_EXPORTER_PROMETHEUS_PORT=9808" in endpoint.rule


def test_the_node_number_is_the_end_of_the_short_name_only() -> None:
    assert node_number("celery3@host7") == 3
    assert node_number("image@host7") is None


def test_a_port_that_is_not_a_number_or_out_of_range_names_the_variable_and_node() -> None:
    with pytest.raises(EndpointError, match=r"OTEL_EXPORTER_PROMETHEUS_PORT='nine'"):
        plan_endpoint({"OTEL_EXPORTER_PROMETHEUS_PORT": "nine"}, None)
    with pytest.raises(EndpointError, match=r"port 65536 for celery multi node celery2@box"):
        plan_endpoint({**MULTI, "OTEL_EXPORTER_PROMETHEUS_PORT": "65535"}, "celery2@box")


class FakePort:
    """A port that is busy for the first ``busy`` attempts."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.attempts = 0

    def serve(self, host: str, port: int) -> None:
        self.attempts += 1
        if self.attempts <= self.busy:
            raise OSError(errno.EADDRINUSE, "Address already in use")


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger="otel_celery_metrics"):
        yield caplog


def test_a_free_port_is_served_at_once_without_a_word(log: pytest.LogCaptureFixture) -> None:
    port = FakePort(busy=0)
    server = MetricsServer(Endpoint("127.0.0.1", 9808), serve=port.serve)
    assert server.start()
    assert server.serving and server.thread is None
    assert log.records == []


def test_a_busy_port_is_retried_with_backoff_and_one_line_says_when_it_serves(
    log: pytest.LogCaptureFixture,
) -> None:
    port = FakePort(busy=8)
    waits: list[float] = []
    endpoint = plan_endpoint(MULTI, "celery2@box")
    server = MetricsServer(endpoint, serve=port.serve, wait=lambda s: bool(waits.append(s)))
    assert not server.start()
    assert server.thread is not None
    server.thread.join(10)
    assert server.serving
    assert port.attempts == 9
    assert waits == [1, 2, 4, 8, 15, 15, 15, 15]
    lines = [(r.levelno, r.getMessage()) for r in log.records]
    assert len(lines) == 2, lines
    (level, busy), (_, served) = lines
    assert level == logging.ERROR
    assert "cannot serve /metrics on 0.0.0.0:9809 (celery multi node celery2@box)" in busy
    assert "Address already in use" in busy
    assert "OTEL_EXPORTER_PROMETHEUS_PORT=9808 + 2 - 1" in busy
    assert "now serving /metrics on 0.0.0.0:9809 (celery multi node celery2@box)" in served


def test_stopping_ends_the_retries_quietly(log: pytest.LogCaptureFixture) -> None:
    port = FakePort(busy=100)
    server = MetricsServer(Endpoint("127.0.0.1", 9808), serve=port.serve, first_retry=0.01)
    assert not server.start()
    server.stop()
    assert server.thread is not None
    server.thread.join(10)
    assert not server.thread.is_alive()
    assert not server.serving
    assert len(log.records) == 1  # the busy line only


def test_an_unexpected_error_is_one_line_and_never_raises(log: pytest.LogCaptureFixture) -> None:
    def broken(host: str, port: int) -> None:
        raise RuntimeError("registry exploded")

    assert not MetricsServer(Endpoint("127.0.0.1", 9808), serve=broken).start()
    assert ["registry exploded" in r.getMessage() for r in log.records] == [True]


def test_held_lines_wait_for_the_workers_logging_then_come_in_order(
    log: pytest.LogCaptureFixture,
) -> None:
    port = FakePort(busy=1)
    server = MetricsServer(
        Endpoint("127.0.0.1", 9808), serve=port.serve, wait=lambda _s: False,
        hold_messages=True,
    )
    assert not server.start()
    assert server.thread is not None
    server.thread.join(10)
    assert server.serving
    assert log.records == []  # a detached node's stderr is /dev/null until Celery logs
    server.release_messages()
    assert [m.split(" /metrics")[0] for m in log.messages] == [
        "otel-celery-metrics: cannot serve", "otel-celery-metrics: now serving",
    ]
    server.release_messages()  # idempotent
    assert len(log.records) == 2


def test_the_serving_line_comes_at_warning_when_served_at_once_or_after_a_busy_port(
    log: pytest.LogCaptureFixture,
) -> None:
    def describe(host: str, port: int) -> str:
        return f"serving https://{host}:{port}/metrics; web config x: TLS"

    assert MetricsServer(Endpoint("127.0.0.1", 9808), serve=FakePort(busy=0).serve,
                         serving_message=describe).start()
    server = MetricsServer(Endpoint("127.0.0.1", 9809), serve=FakePort(busy=1).serve,
                           wait=lambda _s: False, serving_message=describe)
    assert not server.start()
    assert server.thread is not None
    server.thread.join(10)
    lines = [(r.levelno, r.getMessage()) for r in log.records]
    assert lines[0] == (logging.WARNING, describe("127.0.0.1", 9808))
    assert lines[-1] == (logging.WARNING, describe("127.0.0.1", 9809))
    assert [level for level, _ in lines] == [logging.WARNING, logging.ERROR, logging.WARNING,
                                             logging.WARNING]


def test_a_serving_line_that_cannot_be_made_does_not_stop_serving(
    log: pytest.LogCaptureFixture,
) -> None:
    def broken(host: str, port: int) -> str:
        raise OSError("web config vanished")

    server = MetricsServer(Endpoint("127.0.0.1", 9808), serve=FakePort(busy=0).serve,
                           serving_message=broken)
    assert server.start() and server.serving
    assert [r.getMessage() for r in log.records] == [
        "otel-celery-metrics: serving /metrics on 127.0.0.1:9808 (cannot describe it: "
        "OSError: web config vanished)"]
