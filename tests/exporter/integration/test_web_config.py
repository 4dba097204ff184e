"""The standalone exporter behind a web config file: a real Prometheus scraping it over
TLS with basic auth and client certificates, each bad file stopping start-up with exit
status 2, and SIGHUP re-reading the file."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.exporter.integration.conftest import BIN, REPO, Proc, free_port
from tests.exporter.support import wait_for
from tests.servers import running_prometheus
from tests.tls_certs import TLSFiles, bcrypt_hash, get, make_tls_files

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

USER, PASSWORD = "prometheus", "scrape-pw-1"
ROTATED = "scrape-pw-2"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def web_config(path: Path, tls: TLSFiles | None, password: str = PASSWORD,
               client_ca: bool = False) -> Path:
    data: dict[str, Any] = {"basic_auth_users": {USER: bcrypt_hash(password)}}
    if tls is not None:
        data["tls_server_config"] = {"cert_file": str(tls.server_cert),
                                     "key_file": str(tls.server_key)}
        if client_ca:
            data["tls_server_config"]["client_ca_file"] = str(tls.ca)
    path.write_text(yaml.safe_dump(data))
    return path


class SecuredExporter(Proc):
    def __init__(self, broker: str, config: Path) -> None:
        self.port = free_port()
        super().__init__([
            str(BIN / "otel-celery-exporter"), f"--broker-url={broker}", f"--port={self.port}",
            "--host=127.0.0.1", f"--web.config.file={config}", "--log-level=INFO",
        ])
        wait_for(lambda: "serving" in self.log or not self.alive(), 20, "the exporter to start")
        assert self.alive(), self.log


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def targets(prometheus: Any) -> dict[str, dict[str, Any]]:
    body = json.loads(prometheus.get("/api/v1/targets"))
    return {t["labels"]["job"]: t for t in body["data"]["activeTargets"]}


@pytest.mark.parametrize("version", ["2", "3"])
def test_prometheus_scrapes_over_tls_with_a_password_and_a_client_certificate(
    version: str, tmp_path: Path, tls: TLSFiles, redis_url: str, procs: list[Proc]
) -> None:
    exporter = SecuredExporter(redis_url, web_config(tmp_path / "web.yml", tls, client_ca=True))
    procs.append(exporter)
    assert f"serving https://127.0.0.1:{exporter.port}/metrics" in exporter.log
    assert "RequireAndVerifyClientCert" in exporter.log

    def job(name: str, password: str, client_cert: bool = True) -> dict[str, Any]:
        tls_config = {"ca_file": str(tls.ca)}
        if client_cert:
            tls_config |= {"cert_file": str(tls.client_cert), "key_file": str(tls.client_key)}
        return {"job_name": name, "scheme": "https", "tls_config": tls_config,
                "basic_auth": {"username": USER, "password": password},
                "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}

    jobs = [job("good", PASSWORD), job("wrong_password", "guess"),
            job("no_client_cert", PASSWORD, client_cert=False)]
    with running_prometheus(tmp_path / "prom", version, jobs) as prometheus:
        def settled() -> dict[str, dict[str, Any]] | None:
            found = targets(prometheus)
            return found if all(t["health"] != "unknown" for t in found.values()) else None

        found = wait_for(settled, 30, "every target scraped once")
        assert found["good"]["health"] == "up", found["good"]
        assert prometheus.scalar_by('up{job="good"}', "job") == {"good": 1.0}
        assert prometheus.query('{job="good",__name__=~"celery_.+"}'), "no exporter series"
        assert found["wrong_password"]["health"] == "down"
        assert "401" in found["wrong_password"]["lastError"]
        assert found["no_client_cert"]["health"] == "down"
        assert found["no_client_cert"]["lastError"]
    # Prometheus' scrape of the broker's password never reaches the exporter log.
    assert "guess" not in exporter.log and PASSWORD not in exporter.log


BAD = {
    "unreadable": (None, "cannot read it: No such file or directory"),
    "bad YAML": ("basic_auth_users: {a: [}\n", "not valid YAML at line 1"),
    "unknown key": ("basic_auth: {}\n", "unknown key basic_auth"),
    "plaintext password": ("basic_auth_users: {alice: hunter2-plain}\n",
                           "basic_auth_users.alice is not a bcrypt hash"),
    "cert and key mismatch": ("mismatch", "do not match"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_web_config_file_stops_start_up_with_status_2_and_one_line(
    case: str, tmp_path: Path, tls: TLSFiles
) -> None:
    content, problem = BAD[case]
    path = tmp_path / "web.yml"
    if content == "mismatch":
        content = yaml.safe_dump({"tls_server_config": {"cert_file": str(tls.server_cert),
                                                        "key_file": str(tls.other_key)}})
    if content is not None:
        path.write_text(content)
    port = free_port()
    result = subprocess.run(
        [str(BIN / "otel-celery-exporter"), "--broker-url=redis://:brokerpw@127.0.0.1:6379/12",
         f"--port={port}", "--host=127.0.0.1"],
        env={"PATH": str(BIN), "OTEL_CELERY_EXPORTER_WEB_CONFIG_FILE": str(path)},
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    lines = (result.stdout + result.stderr).splitlines()
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert f"web config {path}: " in lines[0] and problem in lines[0]
    assert "hunter2" not in lines[0] and "brokerpw" not in lines[0]
    assert not listening(port)


def test_sighup_rereads_the_file_and_a_bad_one_closes_the_endpoint(
    tmp_path: Path, tls: TLSFiles, redis_url: str, procs: list[Proc]
) -> None:
    config = web_config(tmp_path / "web.yml", tls)
    exporter = SecuredExporter(redis_url, config)
    procs.append(exporter)
    assert get(exporter.port, ca=tls.ca, auth=(USER, PASSWORD))[0] == 200

    web_config(config, tls, password=ROTATED)
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"web config {config} reloaded" in exporter.log, 10, "the reload log line")
    assert get(exporter.port, ca=tls.ca, auth=(USER, PASSWORD))[0] == 401
    assert get(exporter.port, "/health", ca=tls.ca, auth=(USER, ROTATED))[0] in (200, 503)

    config.write_text("tls_server_config: {cert_file: gone.pem, key_file: gone-key.pem}\n")
    exporter.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "refusing every connection" in exporter.log, 10, "the error line")
    with pytest.raises(OSError):
        get(exporter.port, ca=tls.ca, auth=(USER, ROTATED))
    with pytest.raises(OSError):
        get(exporter.port, auth=(USER, ROTATED))
    assert exporter.alive()
    assert "BEGIN" not in exporter.log and "$2b$" not in exporter.log
