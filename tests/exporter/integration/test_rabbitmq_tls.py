"""The exporter over amqps:// to a private RabbitMQ node with a TLS listener.

The node refuses a client without a certificate our test CA signed, so a connected
exporter shows its client certificate was sent; the exporter checks the node's
certificate chain against the CA it is given, and its host name. The URLs say
``localhost``, but kombu's py-amqp transport rewrites ``localhost`` to ``127.0.0.1``
before it fills in the name to check: the name checked is ``127.0.0.1``, which the test
certificate carries as an IP address. A second node, whose certificate our CA signed for
``broker.test`` only, shows that ``full`` checks that name and ``ca`` does not. The tests
publish over the node's plain port and read what the exporter serves. One set of
certificates (``tests/tls_certs.py``) for the module; a node takes about 6 s to start.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tests.exporter.integration import private_rabbitmq
from tests.exporter.integration.conftest import (
    ExporterProc,
    assert_only_the_chain_check_connects,
)
from tests.exporter.support import total, value, wait_for
from tests.tls_certs import TLSFiles, make_tls_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("broker-tls"))


@pytest.fixture(scope="module")
def node(tls: TLSFiles) -> Iterator[private_rabbitmq.PrivateRabbitMQ]:
    if not private_rabbitmq.available():
        pytest.fail(f"rabbitmq-server is not installed under {private_rabbitmq.SBIN} "
                    "(set RABBITMQ_SBIN)")
    rabbit = private_rabbitmq.PrivateRabbitMQ(tls, require_client_cert=True)
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.cleanup()


@pytest.fixture(scope="module")
def misnamed_node(tls: TLSFiles) -> Iterator[private_rabbitmq.PrivateRabbitMQ]:
    """A node whose certificate our CA signed for ``broker.test`` only."""
    rabbit = private_rabbitmq.PrivateRabbitMQ(replace(
        tls, server_cert=tls.misnamed_server_cert, server_key=tls.misnamed_server_key))
    try:
        rabbit.start()
        yield rabbit
    finally:
        rabbit.cleanup()


def client_certificate_env(tls: TLSFiles) -> dict[str, str]:
    # Through the environment, as a Kubernetes secret mount would give them.
    return {"OTEL_CELERY_EXPORTER_BROKER_TLS_CERT_FILE": str(tls.client_cert),
            "OTEL_CELERY_EXPORTER_BROKER_TLS_KEY_FILE": str(tls.client_key)}


def task_events(task_id: str) -> list[tuple[str, str, bytes]]:
    """A task's events as Celery sends them: task-sent from the producer, then the
    worker's buffered task.multi batch."""
    common = {"uuid": task_id, "hostname": "celery@tls-worker", "timestamp": 1.0}
    sent = {"type": "task-sent", "name": "tls.job", "queue": "tls-jobs", **common}
    batch = [{"type": "task-received", "name": "tls.job", **common},
             {"type": "task-started", **common},
             {"type": "task-succeeded", "runtime": 0.25, **common}]
    return [("celeryev", "task.sent", json.dumps(sent).encode()),
            ("celeryev", "task.multi", json.dumps(batch).encode())]


def test_events_over_amqps_are_counted_and_the_probes_use_tls_too(
    node: private_rabbitmq.PrivateRabbitMQ, tls: TLSFiles, procs: list[ExporterProc]
) -> None:
    backlog = "tls-backlog"
    node.publish([("", backlog, b"{}")] * 3, declare=(backlog,))
    exporter = ExporterProc(node.tls_url, f"--broker-tls-ca-file={tls.ca}",
                            f"--queues={backlog}", env=client_certificate_env(tls))
    procs.append(exporter)
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_broker_connected") == 1, 30,
             "the exporter to connect over TLS")
    node.publish(task_events("t-1") + task_events("t-2"))

    def counted() -> str | None:
        text = exporter.scrape()
        done = total(text, "celery_task_succeeded_total", task_name="tls.job") == 2
        probed = value(text, "celery_queue_messages", queue=backlog) == 3
        return text if done and probed else None

    text = wait_for(counted, 30, "both tasks counted and the backlog probed over TLS")
    jobs = {"task_name": "tls.job", "queue": "tls-jobs"}
    assert value(text, "celery_task_sent_total", **jobs) == 2
    assert value(text, "celery_task_started_total", **jobs) == 2
    assert value(text, "celery_tasks_total", state="SUCCESS", **jobs) == 2
    assert value(text, "celery_exporter_broker_connected") == 1
    assert exporter.get("/health")[0] == 200
    assert (f"(TLS, certificate and host name verified against {tls.ca}, client certificate "
            f"{tls.client_cert}; receiver: AmqpEventReceiver; metrics to ") in exporter.log
    assert "guest:guest" not in exporter.log


def test_a_wrong_ca_is_one_clear_error_and_the_exporter_keeps_running(
    node: private_rabbitmq.PrivateRabbitMQ, tls: TLSFiles, procs: list[ExporterProc],
    tmp_path: Path,
) -> None:
    # A CA file holding a certificate that did not sign the node's.
    wrong_ca = tmp_path / "ca.pem"
    shutil.copy(tls.stranger_cert, wrong_ca)
    exporter = ExporterProc(node.tls_url, f"--broker-tls-ca-file={wrong_ca}",
                            env=client_certificate_env(tls))
    procs.append(exporter)
    # Several attempts (the warnings), so a repeated error line would show.
    wait_for(lambda: exporter.log.count("cannot reach the broker") >= 4, 30,
             "four failed connection attempts")
    errors = [line for line in exporter.log.splitlines() if " ERROR " in line]
    masked = f"amqps://guest:***@localhost:{node.tls_port}//"
    assert len(errors) == 1, errors
    assert (f"TLS with the broker {masked} failed: CERTIFICATE_VERIFY_FAILED "
            f"(self-signed certificate in certificate chain). Settings: TLS, certificate and "
            f"host name verified against {wrong_ca}, client certificate {tls.client_cert} "
            "(--broker-tls-ca-file, ") in errors[0]
    status, body = exporter.get("/health")
    assert status == 503
    assert f"broker {masked} unreachable" in body
    assert value(exporter.scrape(), "celery_exporter_broker_connected") == 0
    assert exporter.alive()
    assert "guest:guest" not in exporter.log
    assert "PRIVATE KEY" not in exporter.log
    # Each attempt reads the files again: the right CA in place, and it connects.
    shutil.copy(tls.ca, wrong_ca)
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_broker_connected") == 1, 30,
             "the exporter to connect once the CA file is right")
    assert exporter.get("/health")[0] == 200


def test_verification_off_is_said_at_start_and_connects_to_an_unknown_certificate(
    node: private_rabbitmq.PrivateRabbitMQ, tls: TLSFiles, procs: list[ExporterProc]
) -> None:
    exporter = ExporterProc(node.tls_url, "--broker-tls-verify=none",
                            env=client_certificate_env(tls))
    procs.append(exporter)
    wait_for(lambda: value(exporter.scrape(), "celery_exporter_broker_connected") == 1, 30,
             "the exporter to connect without verifying")
    warnings = [line for line in exporter.log.splitlines() if " WARNING " in line]
    assert any("the broker's TLS certificate is not verified (--broker-tls-verify=none)"
               in line for line in warnings), warnings
    assert "(TLS, NOT VERIFIED, client certificate" in exporter.log


def test_full_verification_checks_the_host_name_kombu_connects_to_and_ca_does_not(
    misnamed_node: private_rabbitmq.PrivateRabbitMQ, tls: TLSFiles, procs: list[ExporterProc]
) -> None:
    full = ExporterProc(misnamed_node.tls_url, f"--broker-tls-ca-file={tls.ca}")
    ca_only = ExporterProc(misnamed_node.tls_url, f"--broker-tls-ca-file={tls.ca}",
                           "--broker-tls-verify=ca")
    procs.extend([full, ca_only])
    # The URL says localhost; kombu checks the certificate against 127.0.0.1.
    assert_only_the_chain_check_connects(full, ca_only, (
        f"TLS with the broker amqps://guest:***@localhost:{misnamed_node.tls_port}// "
        "failed: CERTIFICATE_VERIFY_FAILED (IP address mismatch, certificate is not valid "
        "for '127.0.0.1'.)"))
