"""The in-process endpoint's web config: the pre-SDK hook's choice of reader, and
setup_metrics() serving its registry behind the file (real TLS clients)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from otel_celery_metrics._sdk_setup import setup_metrics
from otel_celery_metrics.core.web_config import BCRYPT_COMMAND
from otel_celery_metrics.endpoint import sdk_hooks as _port_check
from otel_celery_metrics.endpoint.exporter_choice import ExporterSwap
from otel_celery_metrics.endpoint.guarded_web import (
    EXPORTER_NAME,
    WEB_CONFIG_VARIABLE,
    select_guarded_reader,
)
from otel_celery_metrics.endpoint.sdk_hooks import post_sdk_init, pre_sdk_init
from otel_celery_metrics.recording.settings import Settings
from tests.support import free_port
from tests.tls_certs import TLSFiles, bcrypt_hash, get, make_tls_files

USER, PASSWORD = "scraper", "pw-for-tests"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def good_file(tmp_path: Path, tls: TLSFiles) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({
        "tls_server_config": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)},
        "basic_auth_users": {USER: bcrypt_hash(PASSWORD)},
    }))
    return path


def test_a_good_file_selects_our_reader_in_place_of_prometheus(good_file: Path) -> None:
    environ = {"OTEL_METRICS_EXPORTER": "otlp, prometheus", WEB_CONFIG_VARIABLE: str(good_file)}
    assert select_guarded_reader(environ) is None
    assert environ["OTEL_METRICS_EXPORTER"] == f"otlp,{EXPORTER_NAME}"


def test_a_bad_file_closes_the_endpoint_and_keeps_the_other_exporters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = tmp_path / "web.yml"
    bad.write_text("basic_auth_users: {u: not-a-hash}\n")
    environ = {"OTEL_METRICS_EXPORTER": "prometheus,otlp", WEB_CONFIG_VARIABLE: str(bad)}
    message = select_guarded_reader(environ)
    assert environ["OTEL_METRICS_EXPORTER"] == "otlp"
    assert message == (
        f"otel-celery-metrics: {WEB_CONFIG_VARIABLE}: web config {bad}: basic_auth_users.u is "
        "not a bcrypt hash (a plaintext password?); make one with the Python that has "
        f"otel-celery-metrics installed: {BCRYPT_COMMAND}; this worker's /metrics is not served "
        "(tasks keep running)")
    assert [r.getMessage() for r in caplog.records] == [message]
    environ = {"OTEL_METRICS_EXPORTER": "prometheus", WEB_CONFIG_VARIABLE: str(bad)}
    select_guarded_reader(environ)
    assert environ["OTEL_METRICS_EXPORTER"] == "none"


@pytest.mark.parametrize("environ", [
    {"OTEL_METRICS_EXPORTER": "prometheus"},
    {"OTEL_METRICS_EXPORTER": "otlp", WEB_CONFIG_VARIABLE: "/nowhere.yml"},
])
def test_nothing_changes_without_the_variable_or_the_prometheus_exporter(
    environ: dict[str, str]
) -> None:
    before = dict(environ)
    assert select_guarded_reader(environ) is None
    assert environ == before


def test_setup_metrics_serves_its_registry_behind_the_file(
    good_file: Path, tls: TLSFiles, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    caplog.set_level(logging.WARNING)
    provider = setup_metrics(
        "prometheus", prometheus_host="127.0.0.1", prometheus_port=port,
        settings=Settings(web_config_file=str(good_file)), registry=CollectorRegistry(),
        set_global=False, instrument=False,
    )
    try:
        provider.get_meter("t").create_counter("demo_ticks").add(2)
        assert get(port, ca=tls.ca)[0] == 401
        status, _, body = get(port, ca=tls.ca, auth=(USER, PASSWORD))
        assert status == 200 and "demo_ticks_total 2.0" in body
        with pytest.raises(OSError):
            get(port, auth=(USER, PASSWORD))
        # The start-up line, at WARNING as in a worker: visible at a default log level.
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [(
            "WARNING", f"otel-celery-metrics: serving https://127.0.0.1:{port}/metrics; web "
            f"config {good_file}: TLS (min TLS12, NoClientCert), basic auth for 1 user(s)")]
    finally:
        provider.shutdown()


def test_setup_metrics_with_a_bad_file_serves_nothing_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    provider = setup_metrics(
        "prometheus", prometheus_host="127.0.0.1", prometheus_port=port,
        settings=Settings(web_config_file=str(tmp_path / "missing.yml")),
        registry=CollectorRegistry(), set_global=False, instrument=False,
    )
    provider.shutdown()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "missing.yml: cannot read it" in errors[0]
    with pytest.raises(OSError):
        get(port)


def test_exporter_help_never_shows_a_broker_password_from_the_environment() -> None:
    from otel_celery_metrics.exporter.cli import build_parser

    text = build_parser({"OTEL_CELERY_EXPORTER_BROKER_URL": "redis://:s3cr3t@h:6379/0"}
                        ).format_help()
    assert "s3cr3t" not in text and "--web.config.file" in text


def test_without_our_reader_registered_the_endpoint_is_closed_not_open(
    good_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The SDK's own reader cannot apply TLS or basic auth, and a name it cannot find would
    # abort its whole setup: prometheus goes, the rest stays, one line says why.
    environ = {"OTEL_METRICS_EXPORTER": "prometheus,otlp", WEB_CONFIG_VARIABLE: str(good_file)}
    message = select_guarded_reader(environ, registered=lambda: False)
    assert environ["OTEL_METRICS_EXPORTER"] == "otlp"
    assert message is not None
    assert f"the {EXPORTER_NAME} metric reader is not registered" in message
    assert [r.getMessage() for r in caplog.records] == [message]


def test_processes_a_program_starts_inherit_the_users_exporters(
    good_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A web app started under opentelemetry-instrument that launches `celery worker`: the
    # SDK reads our reader's name, the worker it starts must see what the user set.
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "otlp,prometheus")
    monkeypatch.setenv(WEB_CONFIG_VARIABLE, str(good_file))
    monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(free_port()))
    monkeypatch.setattr(_port_check, "_SWAP", ExporterSwap())  # this test's process state
    pre_sdk_init(None)
    try:
        assert os.environ["OTEL_METRICS_EXPORTER"] == f"otlp,{EXPORTER_NAME}"
    finally:
        post_sdk_init(None)
    assert os.environ["OTEL_METRICS_EXPORTER"] == "otlp,prometheus"
