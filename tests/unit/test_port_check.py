"""The SDK hooks: no reader outside workers and beat, ours in them, one line for a busy port."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from types import SimpleNamespace
from typing import Any

import pytest

from otel_celery_metrics.endpoint import sdk_hooks as _port_check
from otel_celery_metrics.endpoint.exporter_choice import (
    ExporterSwap,
    check_prometheus_port,
    prometheus_address,
)
from otel_celery_metrics.endpoint.sdk_hooks import (
    post_sdk_init,
    pre_sdk_init,
    prepare_metrics_exporters,
)
from otel_celery_metrics.endpoint.server import MULTI_MARKER
from otel_celery_metrics.worker.process_role import Role
from tests.support import free_port


def env_for(port: int, exporters: str = "prometheus") -> dict[str, str]:
    return {
        "OTEL_METRICS_EXPORTER": exporters,
        "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
        "OTEL_EXPORTER_PROMETHEUS_PORT": str(port),
    }


def test_the_address_follows_the_exporter_variables_and_their_defaults() -> None:
    assert prometheus_address({}) is None
    assert prometheus_address({"OTEL_METRICS_EXPORTER": "otlp"}) is None
    assert prometheus_address({"OTEL_METRICS_EXPORTER": "otlp, prometheus"}) == (
        "localhost", "9464",
    )
    assert prometheus_address(env_for(9809)) == ("127.0.0.1", "9809")


def test_a_free_port_changes_nothing(caplog: pytest.LogCaptureFixture) -> None:
    environ = env_for(free_port())
    before = dict(environ)
    with caplog.at_level(logging.WARNING):
        assert check_prometheus_port(environ) is None
    assert environ == before
    assert caplog.records == []


def test_a_busy_port_logs_one_line_naming_it_and_drops_prometheus(
    busy_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    environ = env_for(busy_port)
    with caplog.at_level(logging.WARNING):
        message = check_prometheus_port(environ)
    assert message is not None
    assert [r.getMessage() for r in caplog.records] == [message]
    assert caplog.records[0].levelno == logging.ERROR
    assert f"127.0.0.1:{busy_port}" in message
    assert f"OTEL_EXPORTER_PROMETHEUS_PORT={busy_port}" in message
    assert "\n" not in message
    # The SDK then configures without the Prometheus reader instead of aborting.
    assert environ["OTEL_METRICS_EXPORTER"] == "none"


def test_other_exporters_are_kept(busy_port: int) -> None:
    environ = env_for(busy_port, "otlp,prometheus,console")
    assert check_prometheus_port(environ) is not None
    assert environ["OTEL_METRICS_EXPORTER"] == "otlp,console"


def test_a_port_that_is_not_a_number_is_reported_too() -> None:
    environ = env_for(0)
    environ["OTEL_EXPORTER_PROMETHEUS_PORT"] = "nine"
    message = check_prometheus_port(environ)
    assert message is not None
    assert "127.0.0.1:nine" in message
    assert "not a port number" in message


def test_the_check_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(dict):  # type: ignore[type-arg]
        def get(self, *_: object) -> str:
            raise RuntimeError("environment unavailable")

    with caplog.at_level(logging.WARNING):
        assert check_prometheus_port(Broken()) is None
    assert "could not check the Prometheus port" in caplog.text


def test_the_hook_checks_os_environ_and_calls_other_registered_hooks(
    monkeypatch: pytest.MonkeyPatch, busy_port: int
) -> None:
    for key, val in env_for(busy_port).items():
        monkeypatch.setenv(key, val)
    monkeypatch.setattr(_port_check, "_SWAP", ExporterSwap())  # this test's process state
    called: list[Any] = []
    ours = SimpleNamespace(value=f"{_port_check.__name__}:pre_sdk_init", load=lambda: 1 / 0)
    theirs = SimpleNamespace(value="opamp_client:init", load=lambda: called.append)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [ours, theirs])
    pre_sdk_init("resource")
    assert called == ["resource"]
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"


@pytest.mark.parametrize(
    "role", [Role.MULTI_LAUNCHER, Role.DETACHING_WORKER, Role.SHORT_LIVED_COMMAND]
)
def test_processes_that_do_not_serve_get_no_metric_reader_and_later_ones_get_it_back(
    role: Role, busy_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    environ = env_for(busy_port, "prometheus,otlp")
    swap = ExporterSwap()
    with caplog.at_level(logging.DEBUG):
        prepare_metrics_exporters(environ, role, swap)
        # What the SDK reads while it configures this process: nothing to bind or export,
        # and not a word about the (busy) port.
        assert environ["OTEL_METRICS_EXPORTER"] == "none"
        swap.restore(environ)
    assert caplog.records == []
    # What the processes it starts afterwards inherit (celery multi's nodes, the worker a
    # --detach process becomes): the user's value, and for a launcher the node marker.
    assert environ["OTEL_METRICS_EXPORTER"] == "prometheus,otlp"
    assert (MULTI_MARKER in environ) is (role is Role.MULTI_LAUNCHER)


@pytest.mark.parametrize("role", [Role.MONITOR, Role.OTHER_PROGRAM])
def test_monitors_and_other_programs_keep_their_exporters_but_not_a_busy_port(
    role: Role, busy_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    # celery flower / celery events run for days: their own OTLP export stays; a port a
    # worker on the same host already serves is dropped with one line, for this process only.
    environ = env_for(busy_port, "prometheus,otlp")
    swap = ExporterSwap()
    prepare_metrics_exporters(environ, role, swap)
    assert environ["OTEL_METRICS_EXPORTER"] == "otlp"
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert f"cannot serve /metrics on 127.0.0.1:{busy_port}" in line
    swap.restore(environ)
    assert environ["OTEL_METRICS_EXPORTER"] == "prometheus,otlp"


@pytest.mark.parametrize("role", [Role.WORKER, Role.BEAT])
def test_workers_and_beat_get_our_prometheus_reader_and_keep_other_exporters(
    role: Role, busy_port: int
) -> None:
    environ = env_for(busy_port, "otlp, prometheus")
    swap = ExporterSwap()
    prepare_metrics_exporters(environ, role, swap)
    # No check here: our reader itself reports a busy port and retries.
    assert environ["OTEL_METRICS_EXPORTER"] == "otlp,celery_metrics_prometheus"
    swap.restore(environ)
    assert environ["OTEL_METRICS_EXPORTER"] == "otlp, prometheus"


def test_our_reader_is_the_registered_metric_exporter_of_that_name() -> None:
    (entry,) = importlib.metadata.entry_points(
        group="opentelemetry_metrics_exporter", name="celery_metrics_prometheus"
    )
    assert entry.value == "otel_celery_metrics.endpoint.reader:CeleryPrometheusReader"


def test_an_unset_exporter_variable_is_unset_again_after_the_sdk_configured() -> None:
    environ: dict[str, str] = {}
    swap = ExporterSwap()
    prepare_metrics_exporters(environ, Role.SHORT_LIVED_COMMAND, swap)
    assert environ == {"OTEL_METRICS_EXPORTER": "none"}
    swap.restore(environ)
    assert environ == {}


def test_the_post_hook_restores_os_environ_and_calls_other_registered_hooks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    monkeypatch.setattr(_port_check, "process_role", lambda: Role.SHORT_LIVED_COMMAND)
    called: list[Any] = []
    theirs = SimpleNamespace(value="opamp_client:post", load=lambda: called.append)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [theirs])
    pre_sdk_init("resource")
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"
    post_sdk_init("resource")
    assert os.environ["OTEL_METRICS_EXPORTER"] == "prometheus"
    assert called == ["resource", "resource"]


def test_the_instrumentor_restores_the_variable_when_the_sdk_skipped_our_post_hook(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor

    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    monkeypatch.setenv(MULTI_MARKER, "")  # so that the launcher's marker is undone too
    monkeypatch.setattr(_port_check, "process_role", lambda: Role.MULTI_LAUNCHER)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    pre_sdk_init("resource")
    assert os.environ["OTEL_METRICS_EXPORTER"] == "none"
    # Another distribution's post-init function came first: ours never ran. The
    # instrumentor, loaded after the SDK is configured, puts the value back.
    instrumentor = CeleryMetricsInstrumentor()
    instrumentor.instrument(meter_provider=MeterProvider(), role=Role.MULTI_LAUNCHER)
    try:
        assert os.environ["OTEL_METRICS_EXPORTER"] == "prometheus"
    finally:
        instrumentor.uninstrument()


def test_without_our_reader_registered_a_worker_keeps_the_exporters_reader(
    monkeypatch: pytest.MonkeyPatch, busy_port: int
) -> None:
    # An exporter name the SDK cannot find would abort its whole configuration.
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda **_: [])
    environ = env_for(busy_port)
    prepare_metrics_exporters(environ, Role.WORKER, ExporterSwap())
    assert environ["OTEL_METRICS_EXPORTER"] == "prometheus"
