"""The RabbitMQ receiver over TLS reads every record that is ready in one loop turn, as it
reads everything the kernel holds on a plain socket (real TLS sockets, loopback)."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

from otel_celery_metrics.exporter.amqp_receiver import _QUIET, _read_ready_records
from tests.support import wait_for
from tests.tls_certs import TLSFiles, make_tls_files

SENT = 300_000  # about 19 TLS records of 16 KiB


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_pair(tls: TLSFiles) -> Iterator[tuple[ssl.SSLSocket, threading.Event]]:
    """A client TLS socket whose server has written SENT bytes (the event says when)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tls.server_cert, tls.server_key)
    client_ctx = ssl.create_default_context(cafile=str(tls.ca))
    listener = socket.create_server(("127.0.0.1", 0))
    written = threading.Event()
    conns: list[socket.socket] = []

    def serve() -> None:
        raw, _ = listener.accept()
        conn = server_ctx.wrap_socket(raw, server_side=True)
        conns.append(conn)
        conn.sendall(b"x" * SENT)
        written.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = client_ctx.wrap_socket(
        socket.create_connection(listener.getsockname()), server_hostname="localhost")
    client.settimeout(_QUIET)
    try:
        yield client, written
    finally:
        client.close()
        thread.join(5)
        for conn in conns:
            conn.close()
        listener.close()


def test_every_ready_record_is_read_in_one_turn(
    tls_pair: tuple[ssl.SSLSocket, threading.Event]
) -> None:
    client, written = tls_pair
    wait_for(written.is_set, timeout=10, what="the server wrote everything")
    first = client.recv(1 << 20)
    # The premise: one recv returns one record, however much is asked for and is there.
    assert 0 < len(first) <= 16_384
    # Everything is in the kernel's buffer by now (loopback, fully written), but a record
    # may still be on its way between the two ends: take what is ready until all is read.
    data = _read_ready_records(client, first)
    got = len(data)
    while got < SENT:
        got += len(_read_ready_records(client, client.recv(1 << 20)))
    assert got == SENT
    assert len(data) > 3 * 16_384  # several records in the first turn, not one
    assert client.gettimeout() == _QUIET  # the socket waits again for the next read
    # Nothing ready: it returns at once with what it was given (a wait would time out and
    # raise here, since only "no record ready" is caught).
    assert _read_ready_records(client, b"tail") == b"tail"
