"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.sqs_server import ElasticMQ, running_elasticmq


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on (SO_REUSEADDR does not get around it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def elasticmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticMQ]:
    """One ElasticMQ (SQS) for the session, started when a test first asks for it; every
    test uses its own queues."""
    with running_elasticmq(tmp_path_factory.mktemp("elasticmq")) as server:
        yield server
