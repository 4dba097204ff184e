"""Broker fixtures for integration tests: real Redis and RabbitMQ, one fresh queue per test."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.support import RABBITMQ_URL, REDIS_URL, close_producers, unique_queue


def _answers(url: str) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 0), 2):
            return True
    except OSError:
        return False


BROKERS = {"redis": REDIS_URL, "rabbitmq": RABBITMQ_URL}


@pytest.fixture(params=sorted(BROKERS))
def broker_url(request: pytest.FixtureRequest) -> str:
    url = BROKERS[request.param]
    if not _answers(url):
        pytest.fail(f"{request.param} broker at {url} does not answer: scripts/setup starts it")
    return url


@pytest.fixture
def redis_url() -> str:
    if not _answers(REDIS_URL):
        pytest.fail(f"Redis at {REDIS_URL} does not answer: scripts/setup starts it")
    return REDIS_URL


@pytest.fixture
def queue() -> Iterator[str]:
    yield unique_queue()


@pytest.fixture(autouse=True)
def _close_producers() -> Iterator[None]:
    yield
    close_producers()
