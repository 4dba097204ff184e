"""TLS to the broker: settings -> ``broker_use_ssl``, bad files stop start-up, errors said once."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from kombu.exceptions import OperationalError

from otel_celery_metrics.exporter.broker_tls import BrokerTLSError, broker_use_ssl
from otel_celery_metrics.exporter.cli import config_from_args, env_name
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.receiver import KombuReceiver
from tests.tls_certs import TLSFiles, make_tls_files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("broker-tls"))


def test_amqps_verifies_the_chain_and_the_host_name_by_default(tls: TLSFiles) -> None:
    # No CA file: py-amqp loads the system's CAs for CERT_REQUIRED.
    assert broker_use_ssl(ExporterConfig(broker_url="amqps://rabbit//")) == {
        "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
    config = ExporterConfig(broker_url="amqps://u:p@rabbit:5671//",
                            broker_tls_ca_file=str(tls.ca),
                            broker_tls_cert_file=str(tls.client_cert),
                            broker_tls_key_file=str(tls.client_key))
    assert broker_use_ssl(config) == {
        "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None, "ca_certs": str(tls.ca),
        "certfile": str(tls.client_cert), "keyfile": str(tls.client_key)}


def test_verification_is_lowered_only_by_name(tls: TLSFiles) -> None:
    ca = ExporterConfig(broker_url="amqps://rabbit//", broker_tls_ca_file=str(tls.ca),
                        broker_tls_verify="ca")
    assert broker_use_ssl(ca) == {"cert_reqs": ssl.CERT_REQUIRED, "ca_certs": str(tls.ca)}
    none = ExporterConfig(broker_url="amqps://rabbit//", broker_tls_verify="none")
    assert broker_use_ssl(none) == {"cert_reqs": ssl.CERT_NONE}


def test_rediss_gets_redis_py_option_names_and_is_verified_too(tls: TLSFiles) -> None:
    # Without options kombu would connect to rediss:// unverified (ssl_cert_reqs=CERT_NONE).
    assert broker_use_ssl(ExporterConfig(broker_url="rediss://redis:6380/0")) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    config = ExporterConfig(broker_url="rediss://redis:6380/0", broker_tls_ca_file=str(tls.ca),
                            broker_tls_cert_file=str(tls.client_cert),
                            broker_tls_key_file=str(tls.client_key), broker_tls_verify="ca")
    assert broker_use_ssl(config) == {
        "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": False,
        "ssl_ca_certs": str(tls.ca), "ssl_certfile": str(tls.client_cert),
        "ssl_keyfile": str(tls.client_key)}


def test_the_celery_app_hands_the_options_to_every_broker_connection(
    make_exporter, tls: TLSFiles
) -> None:
    exporter = make_exporter(broker_url="amqps://rabbit//", broker_tls_ca_file=str(tls.ca))
    expected = {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None,
                "ca_certs": str(tls.ca)}
    assert exporter.app.conf.broker_use_ssl == expected
    with exporter.app.connection_for_read() as conn:  # not connected: nothing is opened
        assert conn.ssl == expected
    assert make_exporter(broker_url="amqp://rabbit//").app.conf.broker_use_ssl is None


def test_a_tls_setting_on_a_plain_url_is_an_error_with_the_url_masked(tls: TLSFiles) -> None:
    config = ExporterConfig(broker_url="amqp://u:s3cret@rabbit:5671//",
                            broker_tls_ca_file=str(tls.ca))
    with pytest.raises(BrokerTLSError) as raised:
        broker_use_ssl(config)
    assert str(raised.value) == (
        f"broker_tls_ca_file {tls.ca}: TLS settings apply to amqps:// and rediss:// URLs "
        "only, not amqp://u:***@rabbit:5671//")


def test_a_tls_setting_on_a_sentinel_url_says_which_urls_take_it_not_plain_text(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--broker-url=sentinel://:s3cret@sentinel:26379/0",
                          "--broker-tls-verify=ca"], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "otel-celery-exporter: error: --broker-tls-verify (OTEL_CELERY_EXPORTER_BROKER_TLS_"
        "VERIFY) ca: TLS settings apply to amqps:// and rediss:// URLs only, not "
        "sentinel://:***@sentinel:26379/0")
    assert "plain" not in err
    assert "s3cret" not in err


def test_the_raw_redis_reader_with_rediss_exits_2_before_sending_a_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--broker-url=rediss://:s3cret@redis:6380/0", "--receiver=redis"], {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "otel-celery-exporter: error: --receiver (OTEL_CELERY_EXPORTER_RECEIVER) redis: the "
        "raw Redis reader has no TLS; use --receiver=auto or --receiver=kombu with rediss://")
    assert "s3cret" not in err


@pytest.mark.parametrize("receiver", ["auto", "kombu"])
def test_rediss_is_read_by_kombu_which_is_given_the_tls_settings(
    make_exporter, receiver: str
) -> None:
    config = config_from_args(["--broker-url=rediss://:s3cret@redis:6380/0",
                               f"--receiver={receiver}"], {})
    exporter = make_exporter(broker_url=config.broker_url, receiver=config.receiver)
    assert type(exporter.receiver) is KombuReceiver
    assert exporter.app.conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED,
                                                "ssl_check_hostname": True}


def encrypted_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pass phrase")))
    return path


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ca_file": "{dir}/missing.pem"},
         "--broker-tls-ca-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CA_FILE) {dir}/missing.pem: "
         "no such file"),
        ({"ca_file": "{dir}"},
         "--broker-tls-ca-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CA_FILE) {dir}: is a "
         "directory, not a file"),
        ({"ca_file": "{client_key}"},
         "--broker-tls-ca-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CA_FILE) {client_key}: holds "
         "no PEM certificate"),
        ({"cert_file": "{client_cert}", "key_file": "{other_key}"},
         "--broker-tls-cert-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CERT_FILE) {client_cert} and "
         "--broker-tls-key-file (OTEL_CELERY_EXPORTER_BROKER_TLS_KEY_FILE) {other_key}: the "
         "certificate and the key do not match"),
        ({"key_file": "{client_key}"},
         "--broker-tls-key-file (OTEL_CELERY_EXPORTER_BROKER_TLS_KEY_FILE) {client_key}: a "
         "client key needs its certificate"),
        ({"cert_file": "{client_cert}", "key_file": "{encrypted}"},
         "and --broker-tls-key-file (OTEL_CELERY_EXPORTER_BROKER_TLS_KEY_FILE) {encrypted}: "
         "the key is encrypted; give an unencrypted key"),
        ({"cert_file": "{client_cert}"},
         "error: --broker-tls-cert-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CERT_FILE) {client_cert}: "
         "holds no private key; give --broker-tls-key-file"),
        ({"cert_file": "{client_cert}", "key_file": "{client_cert}"},
         "error: --broker-tls-key-file (OTEL_CELERY_EXPORTER_BROKER_TLS_KEY_FILE) {client_cert}: "
         "holds no PEM private key"),
        ({"cert_file": "{client_key}", "key_file": "{client_key}"},
         "error: --broker-tls-cert-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CERT_FILE) {client_key}: "
         "holds no PEM certificate"),
    ],
    ids=["missing", "directory", "not-a-certificate", "mismatch", "key-alone", "encrypted",
         "certificate-without-key", "key-file-without-key", "certificate-file-without-one"],
)
def test_a_bad_file_exits_2_naming_the_setting_and_the_file_never_its_contents(
    settings: dict[str, str], message: str, tls: TLSFiles, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    names = {"dir": str(tmp_path), "client_key": str(tls.client_key),
             "client_cert": str(tls.client_cert), "other_key": str(tls.other_key),
             "encrypted": str(encrypted_key(tmp_path / "encrypted-key.pem"))}
    argv = ["--broker-url=amqps://guest:s3cret@rabbit//"] + [
        f"--broker-tls-{name.replace('_', '-')}={value.format(**names)}"
        for name, value in settings.items()]
    with pytest.raises(SystemExit) as exited:
        config_from_args(argv, {})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message.format(**names) in err
    assert "s3cret" not in err
    assert "PRIVATE KEY" not in err
    for key in (tls.client_key, tls.other_key):
        body = key.read_text().splitlines()[1]
        assert body not in err


def test_the_command_exits_2_before_connecting_for_a_file_named_in_the_environment(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "ca.pem"
    result = subprocess.run(
        [sys.executable, "-m", "otel_celery_metrics.exporter.cli",
         "--broker-url=amqps://guest:s3cret@127.0.0.1:1//", "--port=0"],
        env={env_name("broker_tls_ca_file"): str(missing), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert (f"--broker-tls-ca-file (OTEL_CELERY_EXPORTER_BROKER_TLS_CA_FILE) {missing}: "
            "no such file") in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_a_bad_verify_mode_in_the_environment_exits_2_naming_the_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        config_from_args(["--broker-url=amqps://rabbit//"],
                         {env_name("broker_tls_verify"): "maybe"})
    assert exited.value.code == 2
    assert "OTEL_CELERY_EXPORTER_BROKER_TLS_VERIFY: expected one of full, ca, none" in (
        capsys.readouterr().err)


def verify_failed(why: str) -> OperationalError:
    """What kombu raises for a failed handshake: its error, caused by ssl's."""
    try:
        try:
            raise ssl.SSLCertVerificationError(1, f"certificate verify failed: {why}")
        except ssl.SSLError as exc:
            exc.reason = "CERTIFICATE_VERIFY_FAILED"
            exc.verify_message = why
            raise OperationalError(str(exc)) from exc
    except OperationalError as wrapped:
        return wrapped


def test_a_tls_failure_is_one_error_line_until_it_changes_or_a_connection_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = ExporterConfig(broker_url="rediss://:s3cret@redis:6380/0",
                            reconnect_initial=0.001, reconnect_max=0.001)
    receiver = KombuReceiver(config, app=None, handle=lambda e: None, clock=lambda: 0)
    stop = threading.Event()
    with caplog.at_level(logging.WARNING):
        for why in ("unable to get local issuer certificate",) * 3 + ("certificate has expired",):
            receiver._on_lost(verify_failed(why), stop)
        receiver._on_lost(ConnectionRefusedError(111, "Connection refused"), stop)
        receiver._on_connected()
        receiver._on_lost(verify_failed("certificate has expired"), stop)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "TLS with the broker rediss://:***@redis:6380/0 failed: CERTIFICATE_VERIFY_FAILED "
        f"({why}). Settings: TLS, certificate and host name verified against the system's "
        "CAs (--broker-tls-ca-file, --broker-tls-cert-file, --broker-tls-key-file, "
        "--broker-tls-verify); retrying"
        for why in ("unable to get local issuer certificate", "certificate has expired",
                    "certificate has expired")]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 6
    assert "s3cret" not in caplog.text
