"""The exporter over rediss:// to a private redis-server that serves TLS only.

The server requires a client certificate our test CA signed; the exporter checks the
server's chain and host name (``localhost``; redis-py checks the URL's host as written).
Without options kombu would connect to ``rediss://`` unverified: the wrong-CA test shows
the exporter does not, and a second server, whose certificate our CA signed for
``broker.test`` only, shows that ``full`` checks the name and ``ca`` does not.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from tests.exporter.integration.conftest import (
    ExporterProc,
    RedisServer,
    assert_only_the_chain_check_connects,
)
from tests.exporter.support import value, wait_for
from tests.tls_certs import TLSFiles, make_tls_files

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("redis-tls"))


@pytest.fixture(scope="module")
def server(tls: TLSFiles) -> Iterator[RedisServer]:
    redis = RedisServer(password=f"pw-{uuid.uuid4().hex[:12]}", tls=tls)
    yield redis
    redis.stop()


def client_files(tls: TLSFiles, ca: Any = None) -> tuple[str, ...]:
    return (f"--broker-tls-ca-file={ca or tls.ca}", f"--broker-tls-cert-file={tls.client_cert}",
            f"--broker-tls-key-file={tls.client_key}")


def test_events_over_rediss_are_counted_and_the_queue_probe_uses_tls_too(
    server: RedisServer, tls: TLSFiles, procs
) -> None:
    import redis
    from celery import Celery

    # A backlog on the TLS server: the queue probe reads it with its own redis-py client,
    # which must be given the CA and the client certificate too.
    backlog = f"tls-backlog-{uuid.uuid4().hex[:8]}"
    with redis.Redis.from_url(server.url, ssl_ca_certs=str(tls.ca),
                              ssl_certfile=str(tls.client_cert),
                              ssl_keyfile=str(tls.client_key)) as client:
        client.lpush(backlog, *[b"{}"] * 4)
    exporter = ExporterProc(server.url, *client_files(tls), f"--queues={backlog}")
    procs.append(exporter)
    assert "receiver: KombuReceiver" in exporter.log
    worker = Celery("tls-worker", broker=server.url, set_as_current=False)
    worker.conf.broker_use_ssl = {"ssl_ca_certs": str(tls.ca),
                                  "ssl_certfile": str(tls.client_cert),
                                  "ssl_keyfile": str(tls.client_key)}
    with worker.events.default_dispatcher(hostname="celery@tls-redis") as dispatcher:
        def seen() -> bool:
            # Pub/sub keeps nothing for a subscriber that is not there yet: send until seen.
            dispatcher.send("worker-heartbeat", active=0, processed=1, freq=2.0)
            text = exporter.scrape()
            return value(text, "celery_worker_up", hostname="celery@tls-redis") == 1

        wait_for(seen, 30, "a heartbeat sent over TLS to reach the exporter")
    wait_for(lambda: value(exporter.scrape(), "celery_queue_messages", queue=backlog) == 4, 30,
             "the backlog probed over TLS")
    assert "queue depth probe failed" not in exporter.log
    assert value(exporter.scrape(), "celery_exporter_broker_connected") == 1
    assert exporter.get("/health")[0] == 200
    assert server.password not in exporter.log


def test_a_wrong_ca_for_rediss_is_one_clear_error(server: RedisServer, tls: TLSFiles,
                                                  procs) -> None:
    exporter = ExporterProc(server.url, *client_files(tls, ca=tls.stranger_cert))
    procs.append(exporter)
    wait_for(lambda: exporter.log.count("cannot reach the broker") >= 3, 30,
             "three failed connection attempts")
    errors = [line for line in exporter.log.splitlines() if " ERROR " in line]
    assert len(errors) == 1, errors
    assert (f"TLS with the broker rediss://:***@localhost:{server.port}/0 failed: "
            "CERTIFICATE_VERIFY_FAILED") in errors[0]
    assert exporter.get("/health")[0] == 503
    assert value(exporter.scrape(), "celery_exporter_broker_connected") == 0
    assert exporter.alive()
    assert server.password not in exporter.log


@pytest.fixture(scope="module")
def misnamed_server(tls: TLSFiles) -> Iterator[RedisServer]:
    """TLS Redis whose certificate our CA signed for ``broker.test`` only; its URL says
    ``localhost``, so only the host name check can tell it apart from the right server."""
    redis = RedisServer(password=f"pw-{uuid.uuid4().hex[:12]}", tls=replace(
        tls, server_cert=tls.misnamed_server_cert, server_key=tls.misnamed_server_key))
    yield redis
    redis.stop()


def test_full_verification_checks_the_host_name_and_ca_does_not(
    misnamed_server: RedisServer, tls: TLSFiles, procs
) -> None:
    full = ExporterProc(misnamed_server.url, *client_files(tls))
    ca_only = ExporterProc(misnamed_server.url, *client_files(tls), "--broker-tls-verify=ca")
    procs.extend([full, ca_only])
    assert_only_the_chain_check_connects(full, ca_only, (
        f"TLS with the broker rediss://:***@localhost:{misnamed_server.port}/0 failed: "
        "CERTIFICATE_VERIFY_FAILED (Hostname mismatch, certificate is not valid for "
        "'localhost'.)"))
    assert misnamed_server.password not in full.log + ca_only.log
