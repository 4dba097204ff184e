"""The web config file (exporter-toolkit format): what is accepted, and each bad file's
one-line error naming the file and the problem (and never a secret)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from otel_celery_metrics.core.web_config import WebConfigError, load_web_config
from tests.tls_certs import TLSFiles, bcrypt_hash, make_tls_files


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "web.yml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_a_full_file_is_read_with_tls_client_certificates_auth_and_headers(
    tmp_path: Path, tls: TLSFiles
) -> None:
    secret_hash = bcrypt_hash("s3cret")
    path = write(tmp_path, {
        "tls_server_config": {"cert_file": str(tls.server_cert),
                              "key_file": str(tls.server_key),
                              "client_ca_file": str(tls.ca), "min_version": "TLS13"},
        "http_server_config": {"headers": {"x-frame-options": "deny"}, "http2": True},
        "basic_auth_users": {"prometheus": secret_hash},
    })
    config = load_web_config(path)
    assert config.scheme == "https"
    assert config.client_auth == "RequireAndVerifyClientCert"  # the toolkit's default with a CA
    assert config.headers == (("X-Frame-Options", "deny"),)
    assert config.describe() == (
        "TLS (min TLS13, RequireAndVerifyClientCert), basic auth for 1 user(s)")
    assert secret_hash not in repr(config) and "prometheus" not in config.describe()


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, tls: TLSFiles) -> None:
    path = write(tls.ca.parent, {"tls_server_config": {"cert_file": tls.server_cert.name,
                                                       "key_file": tls.server_key.name}})
    assert load_web_config(path).scheme == "https"


def test_an_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, ""))
    assert config.tls is None and not config.users
    assert config.authorized(None)


def test_basic_auth_accepts_the_password_and_nothing_else(tmp_path: Path) -> None:
    import base64

    config = load_web_config(write(tmp_path, {"basic_auth_users": {"u": bcrypt_hash("pw")}}))

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert config.authorized(header("u", "pw"))
    assert config.authorized(header("u", "pw"))  # the cached success
    assert not config.authorized(header("u", "wrong"))
    assert not config.authorized(header("someone", "pw"))
    assert not config.authorized(None)
    assert not config.authorized("Bearer abc")
    assert not config.authorized("Basic !!!")


BAD_FILES = {
    "bad YAML": ("tls_server_config: [unclosed", "not valid YAML at line 1"),
    "not a mapping": ("- a\n- b\n", "the file must be a mapping, not list"),
    "unknown key": ({"basic_auth_user": {}}, "unknown key basic_auth_user"),
    "unknown TLS key": ({"tls_server_config": {"certfile": "x"}},
                        "unknown key tls_server_config.certfile"),
    "unsupported TLS key": ({"tls_server_config": {"cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
                            "tls_server_config.cipher_suites is not supported"),
    "plaintext password": ({"basic_auth_users": {"alice": "hunter2-plaintext"}},
                           "basic_auth_users.alice is not a bcrypt hash"),
    "header not allowed": ({"http_server_config": {"headers": {"Set-Cookie": "a=b"}}},
                           "Set-Cookie cannot be set"),
    "missing key file": ({"tls_server_config": {"cert_file": "server.pem"}},
                         "tls_server_config.key_file is required for TLS"),
    "bad min version": ({"tls_server_config": {"cert_file": "a", "key_file": "b",
                                               "min_version": "SSL3"}},
                        "min_version 'SSL3' is not one of TLS10, TLS11, TLS12, TLS13"),
    "unverified client certs": ({"tls_server_config": {
        "cert_file": "a", "key_file": "b", "client_auth_type": "RequireAnyClientCert"}},
        "client_auth_type RequireAnyClientCert is not supported"),
    "client auth without a CA": ({"tls_server_config": {
        "cert_file": "a", "key_file": "b", "client_auth_type": "RequireAndVerifyClientCert"}},
        "client_ca_file is required"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_file_is_one_error_naming_the_file_and_the_problem(
    tmp_path: Path, case: str
) -> None:
    content, problem = BAD_FILES[case]
    path = write(tmp_path, content)
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    message = str(caught.value)
    assert message.startswith(f"web config {path}: ")
    assert problem in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(WebConfigError, match=f"web config {missing}: cannot read it: No such"):
        load_web_config(missing)
    with pytest.raises(WebConfigError, match=f"web config {tmp_path}: cannot read it"):
        load_web_config(tmp_path)


def test_a_certificate_and_a_key_that_do_not_match_are_named(
    tmp_path: Path, tls: TLSFiles
) -> None:
    path = write(tmp_path, {"tls_server_config": {"cert_file": str(tls.server_cert),
                                                  "key_file": str(tls.other_key)}})
    with pytest.raises(WebConfigError) as caught:
        load_web_config(path)
    assert str(caught.value) == (
        f"web config {path}: tls_server_config.cert_file {tls.server_cert} and key_file "
        f"{tls.other_key} do not match (KEY_VALUES_MISMATCH)")
    # The key itself never appears.
    assert "PRIVATE KEY" not in str(caught.value)


def test_a_missing_certificate_file_is_named(tmp_path: Path, tls: TLSFiles) -> None:
    path = write(tmp_path, {"tls_server_config": {"cert_file": str(tmp_path / "gone.pem"),
                                                  "key_file": str(tls.server_key)}})
    with pytest.raises(WebConfigError, match=r"cert_file .*gone\.pem: cannot read it"):
        load_web_config(path)
