"""--broker-transport-option: typed values, the environment form, and the start-up checks
that turn a set-up kombu would refuse for ever into exit 2 and one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from otel_celery_metrics.exporter.cli import TRANSPORT_OPTIONS, config_from_args, env_name
from otel_celery_metrics.exporter.service import transport_options
from otel_celery_metrics.exporter.transport_options import parse_option, split_entries

SENTINEL = "sentinel://:s3cret@127.0.0.1:26379;sentinel://127.0.0.1:26380"


def test_values_are_typed_as_kombu_reads_them() -> None:
    config = config_from_args([
        f"--broker-url={SENTINEL}",
        "--broker-transport-option", "master_name=mymaster",
        "--broker-transport-option", "min_other_sentinels=1",
        "--broker-transport-option", 'sentinel_kwargs={"password": "x", "socket_timeout": 1}',
        "--broker-transport-option", "socket_keepalive=yes",
        "--broker-transport-option", "visibility_timeout=3600",
        "--broker-transport-option", "some_future_option=2.5",
        "--broker-transport-option", "some_text_option=a b",
    ], {})
    assert config.broker_transport_options == {
        "master_name": "mymaster",
        "min_other_sentinels": 1,
        "sentinel_kwargs": {"password": "x", "socket_timeout": 1},
        "socket_keepalive": True,
        "visibility_timeout": 3600.0,
        "some_future_option": 2.5,
        "some_text_option": "a b",
    }


def test_the_users_options_reach_kombu_over_the_exporters_defaults() -> None:
    config = config_from_args([
        f"--broker-url={SENTINEL}", "--probe-timeout=2",
        "--broker-transport-option=master_name=mymaster",
        "--broker-transport-option=socket_timeout=7",
    ], {})
    options = transport_options(config)
    assert options["master_name"] == "mymaster"
    assert options["socket_timeout"] == 7.0
    assert options["socket_connect_timeout"] == 2.0


def test_rabbitmq_round_trips_after_the_handshake_are_bounded_too() -> None:
    config = config_from_args(["--broker-url=amqp://guest:guest@rabbit//",
                               "--probe-timeout=2"], {})
    options = transport_options(config)
    assert (options["read_timeout"], options["write_timeout"]) == (2.0, 2.0)


def test_the_environment_form_keeps_the_commas_of_a_json_value() -> None:
    raw = 'master_name=mymaster, sentinel_kwargs={"password": "x", "db": 1},min_other_sentinels=1'
    assert split_entries(raw) == [
        "master_name=mymaster", 'sentinel_kwargs={"password": "x", "db": 1}',
        "min_other_sentinels=1",
    ]
    config = config_from_args([f"--broker-url={SENTINEL}"], {env_name(TRANSPORT_OPTIONS): raw})
    assert config.broker_transport_options["sentinel_kwargs"] == {"password": "x", "db": 1}
    # A flag replaces the variable's list rather than adding to it.
    flagged = config_from_args(
        [f"--broker-url={SENTINEL}", "--broker-transport-option=master_name=other"],
        {env_name(TRANSPORT_OPTIONS): raw})
    assert flagged.broker_transport_options == {"master_name": "other"}


def test_global_keyprefix_sets_the_redis_key_prefix_and_a_disagreement_exits_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = config_from_args(["--broker-transport-option=global_keyprefix=team:"], {})
    assert config.redis_key_prefix == "team:"
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--redis-key-prefix=a:", "--broker-transport-option=global_keyprefix=b:"],
                         {})
    assert exited.value.code == 2
    assert "disagree" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("min_other_sentinels=one", "min_other_sentinels: expected a whole number: 'one'"),
        ("socket_keepalive=maybe", "socket_keepalive: expected true or false: 'maybe'"),
        ("sentinel_kwargs=[1]", "sentinel_kwargs: expected a JSON dict: '[1]'"),
        ("master_name", "expected key=value: 'master_name'"),
    ],
)
def test_a_bad_value_exits_2_naming_the_option(
    entry: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--broker-transport-option", entry], {})
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"otel-celery-exporter: error: --broker-transport-option: {message}")
    with pytest.raises(SystemExit):
        config_from_args([], {env_name(TRANSPORT_OPTIONS): entry})
    assert env_name(TRANSPORT_OPTIONS) in capsys.readouterr().err


def test_parse_option_keeps_unknown_text_as_given() -> None:
    assert parse_option("queue_name_prefix=dev-") == ("queue_name_prefix", "dev-")
    assert parse_option("x={") == ("x", "{")


def test_a_sentinel_url_without_master_name_exits_2_with_one_line_and_never_connects() -> None:
    # Port 1: nothing listens, and nothing must be tried: the check comes first.
    result = subprocess.run(
        [sys.executable, "-m", "otel_celery_metrics.exporter.cli",
         "--broker-url=sentinel://:s3cret@127.0.0.1:1", "--port=0"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        "otel-celery-exporter: error: a sentinel:// --broker-url needs the name of the primary "
        "the sentinels monitor: --broker-transport-option master_name=<name> (as the workers' "
        "broker_transport_options)"]
    assert "s3cret" not in result.stderr


def test_a_scheme_no_kombu_transport_has_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--broker-url=zmq://127.0.0.1:1"], {})
    assert exited.value.code == 2
    assert "no kombu transport for the scheme 'zmq' of --broker-url" in capsys.readouterr().err
