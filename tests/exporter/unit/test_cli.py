"""The command line: flags, environment variables, --help, URL masking."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otel_celery_metrics.exporter.cli import (
    OPTIONS,
    TRANSPORT_OPTIONS,
    config_from_args,
    env_name,
    main,
)
from otel_celery_metrics.exporter.config import ExporterConfig, NameFilter, mask_url


def test_seed_command_line() -> None:
    config = config_from_args(
        ["--broker-url=redis://redis:6379/0", "--port=9808", "--buckets=0.1,0.5,1,2.5,5,10,30,60"],
        {},
    )
    assert config.broker_url == "redis://redis:6379/0"
    assert config.port == 9808
    assert config.buckets == (0.1, 0.5, 1, 2.5, 5, 10, 30, 60)


def test_every_flag_has_an_environment_variable_and_the_flag_wins() -> None:
    env = {
        env_name("port"): "9999",
        env_name("enable_events"): "true",
        env_name("queues"): "a, b",
        env_name("priority_separator"): "\\x06\\x16",
    }
    config = config_from_args([], env)
    assert (config.port, config.enable_events, config.queues) == (9999, True, ("a", "b"))
    assert config.priority_separator == "\x06\x16"
    assert config_from_args(["--port=1234", "--no-enable-events"], env).port == 1234
    assert set(OPTIONS) | {TRANSPORT_OPTIONS} == {
        f for f in ExporterConfig.__dataclass_fields__ if f != "extra"}


def test_help_lists_every_flag_with_its_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "otel_celery_metrics.exporter.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    flat = " ".join(result.stdout.split())
    for name in OPTIONS:
        assert "--" + name.replace("_", "-") in flat
        assert env_name(name) in flat
    assert "--broker-transport-option KEY=VALUE" in flat
    assert env_name(TRANSPORT_OPTIONS) in flat


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("port", "http"),
        ("buckets", "1,0.5"),
        ("worker_timeout", "-1"),
        ("receiver", "zmq"),
        ("log_level", "verbose"),
        ("max_queue_wait", "0"),
        ("max_runtime", "nan"),
        ("clock_skew_tolerance", "a while"),
    ],
)
def test_a_bad_environment_value_exits_2_naming_the_variable(
    variable: str, raw: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        config_from_args([], {env_name(variable): raw})
    assert exited.value.code == 2
    assert env_name(variable) in capsys.readouterr().err


@pytest.mark.parametrize("level", ["info", "INFO", "Info", " warning "])
def test_log_levels_are_taken_in_any_case(level: str) -> None:
    config = config_from_args([f"--log-level={level}"], {})
    assert config.log_level == level.strip().upper()
    assert config_from_args([], {env_name("log_level"): level}).log_level == config.log_level


def test_the_workers_sqs_transport_options_are_taken_key_by_key() -> None:
    queues = '{"celery": {"url": "http://127.0.0.1:9324/000000000000/celery"}}'
    config = config_from_args([
        "--broker-transport-option=region=eu-west-1",
        "--broker-transport-option=queue_name_prefix=prod-",
        f"--broker-transport-option=predefined_queues={queues}",
    ], {})
    assert config.broker_transport_options == {
        "region": "eu-west-1", "queue_name_prefix": "prod-",
        "predefined_queues": {"celery": {"url": "http://127.0.0.1:9324/000000000000/celery"}},
    }
    assert ExporterConfig().broker_transport_options == {}


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("amqp://guest:guest@rabbit:5672//", "amqp://guest:***@rabbit:5672//"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("rediss://user:p%40ss@[::1]:6380/1", "rediss://user:***@[::1]:6380/1"),
        ("amqps://u:s3cret@a:5671//;amqps://u:s3cret2@b:5671//",
         "amqps://u:***@a:5671//;amqps://u:***@b:5671//"),
        ("sentinel://:s3cret@s1:26379;sentinel://:s3cret2@s2:26379",
         "sentinel://:***@s1:26379;sentinel://:***@s2:26379"),
        ("sqs://AKIAEXAMPLE:s3cr%2Fet@", "sqs://AKIAEXAMPLE:***@"),
    ],
)
def test_broker_urls_are_masked(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_name_filter_deny_wins() -> None:
    allowed = NameFilter(("app.*",), ("app.secret",))
    assert allowed("app.x") and not allowed("app.secret") and not allowed("other")
    assert NameFilter((), ())("anything")


def test_on_sqs_without_queues_the_exporter_exits_2_naming_the_flag(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Probe-only mode has no queue discovery: nothing to report without --queues.
    assert main(["--broker-url=sqs://AKIAEXAMPLE:s3cret@127.0.0.1:1", "--port=0"], {}) == 2
    assert "--queues (OTEL_CELERY_EXPORTER_QUEUES) names no queue" in caplog.text
    assert "probe-only mode" in caplog.text and "s3cret" not in caplog.text


@pytest.mark.parametrize("module", ["otel_celery_metrics.exporter.cli", "otel_celery_metrics.demo"])
def test_both_commands_print_the_one_package_version(module: str) -> None:
    from otel_celery_metrics.version import __version__

    result = subprocess.run([sys.executable, "-m", module, "--version"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f" {__version__}")
