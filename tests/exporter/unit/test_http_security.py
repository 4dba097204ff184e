"""The exporter's /metrics and /health behind a web config file, with real TLS clients.

The server is the exporter's own (``make_server``) on a free port; no broker is needed.
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter

from otel_celery_metrics.core.web_config import BCRYPT_COMMAND
from otel_celery_metrics.core.web_serving import WebConfigFile
from otel_celery_metrics.exporter.http import make_server
from tests.tls_certs import TLSFiles, bcrypt_hash, get, make_tls_files

USER, PASSWORD = "prometheus", "correct horse"
ROTATED, FIXED = "rotated", "fixed"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def write_config(path: Path, tls: TLSFiles | None, *, password: str = PASSWORD,
                 client_ca: bool = False, **extra: Any) -> Path:
    data: dict[str, Any] = {"basic_auth_users": {USER: bcrypt_hash(password)}, **extra}
    if tls is not None:
        data["tls_server_config"] = {"cert_file": str(tls.server_cert),
                                     "key_file": str(tls.server_key)}
        if client_ca:
            data["tls_server_config"]["client_ca_file"] = str(tls.ca)
    # Write then rename, as configuration management does: the reader never sees half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data))
    os.replace(tmp, path)
    return path


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Any] = []

    def start(config_path: Path) -> int:
        registry = CollectorRegistry()
        Counter("demo_events", "Demo.", registry=registry).inc(3)
        server = make_server("127.0.0.1", 0, registry, threading.Lock(), lambda: (True, []),
                             web_config=WebConfigFile.open(config_path))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_metrics_and_health_need_the_password_over_tls(
    tmp_path: Path, tls: TLSFiles, serve: Any
) -> None:
    port = serve(write_config(tmp_path / "web.yml", tls,
                              http_server_config={"headers": {"X-Frame-Options": "deny"}}))
    for path in ("/metrics", "/health"):
        status, headers, _ = get(port, path, ca=tls.ca)
        assert status == 401
        assert headers["WWW-Authenticate"].startswith("Basic")
        assert get(port, path, ca=tls.ca, auth=(USER, "wrong"))[0] == 401
        assert get(port, path, ca=tls.ca, auth=("nobody", PASSWORD))[0] == 401
    status, headers, body = get(port, "/metrics", ca=tls.ca, auth=(USER, PASSWORD))
    assert status == 200
    assert "demo_events_total 3.0" in body
    assert headers["X-Frame-Options"] == "deny"
    assert get(port, "/health", ca=tls.ca, auth=(USER, PASSWORD))[:3:2] == (200, "ok\n")


def test_plain_http_to_the_tls_listener_gets_no_metrics(
    tmp_path: Path, tls: TLSFiles, serve: Any
) -> None:
    port = serve(write_config(tmp_path / "web.yml", tls))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(port, "/metrics", auth=(USER, PASSWORD))
    # The listener still serves TLS clients afterwards.
    assert get(port, ca=tls.ca, auth=(USER, PASSWORD))[0] == 200


def test_client_certificates_are_required_when_a_client_ca_is_configured(
    tmp_path: Path, tls: TLSFiles, serve: Any
) -> None:
    port = serve(write_config(tmp_path / "web.yml", tls, client_ca=True))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(port, ca=tls.ca, auth=(USER, PASSWORD))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        get(port, ca=tls.ca, auth=(USER, PASSWORD), client=(tls.stranger_cert, tls.stranger_key))
    status, _, body = get(port, ca=tls.ca, auth=(USER, PASSWORD),
                          client=(tls.client_cert, tls.client_key))
    assert status == 200 and "demo_events_total" in body


def test_a_changed_file_takes_effect_and_a_broken_one_closes_the_endpoint(
    tmp_path: Path, tls: TLSFiles, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "web.yml"
    port = serve(write_config(config, tls))
    assert get(port, ca=tls.ca, auth=(USER, PASSWORD))[0] == 200

    write_config(config, tls, password=ROTATED)
    assert get(port, ca=tls.ca, auth=(USER, PASSWORD))[0] == 401
    assert get(port, ca=tls.ca, auth=(USER, ROTATED))[0] == 200

    config.write_text("basic_auth_users: {prometheus: plaintext-oops}\n")
    with pytest.raises((http.client.HTTPException, ConnectionError, ssl.SSLError)):
        get(port, ca=tls.ca, auth=(USER, ROTATED))
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        get(port, auth=(USER, ROTATED))  # and never an open plain endpoint
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"web config {config}: basic_auth_users.prometheus is not a bcrypt hash "
                      "(a plaintext password?); make one with the Python that has "
                      f"otel-celery-metrics installed: {BCRYPT_COMMAND}; refusing every connection "
                      "until it is fixed"]
    assert "plaintext-oops" not in caplog.text

    write_config(config, tls, password=FIXED)
    assert get(port, ca=tls.ca, auth=(USER, FIXED))[0] == 200
