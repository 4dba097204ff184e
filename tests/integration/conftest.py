"""Broker fixtures for integration tests: real Redis, RabbitMQ and an SQS-compatible server
(ElasticMQ), one fresh queue per test."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from urllib.parse import urlparse

import pytest

from tests.sqs_server import SQS_TEST_OPTIONS, ElasticMQ
from tests.support import (
    RABBITMQ_URL,
    REDIS_URL,
    TRANSPORT_OPTIONS_ENV,
    close_producers,
    unique_queue,
)


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
def rabbitmq_url() -> str:
    if not _answers(RABBITMQ_URL):
        pytest.fail(f"RabbitMQ at {RABBITMQ_URL} does not answer: scripts/setup starts it")
    return RABBITMQ_URL


def _sqs_broker(variant: str, elasticmq: ElasticMQ, monkeypatch: pytest.MonkeyPatch) -> str:
    """ElasticMQ's broker URL; ``variant`` "sqs-prefixed" adds a fresh ``queue_name_prefix``.

    The transport options reach every process of the test through TEST_BROKER_TRANSPORT_OPTIONS
    (the tests' apps and :func:`tests.support.producer` read it), as a deployment would set
    ``broker_transport_options`` in its Celery config.
    """
    options: dict[str, object] = dict(SQS_TEST_OPTIONS)
    if variant == "sqs-prefixed":
        options["queue_name_prefix"] = f"pfx{uuid.uuid4().hex[:6]}-"
    monkeypatch.setenv(TRANSPORT_OPTIONS_ENV, json.dumps(options))
    return elasticmq.broker_url()


@pytest.fixture(params=["sqs", "sqs-prefixed"])
def sqs_url(
    request: pytest.FixtureRequest, elasticmq: ElasticMQ, monkeypatch: pytest.MonkeyPatch
) -> str:
    """SQS (ElasticMQ) without and with a ``queue_name_prefix``."""
    return _sqs_broker(request.param, elasticmq, monkeypatch)


@pytest.fixture
def core_broker_url(request: pytest.FixtureRequest) -> str:
    """Redis (the default), "sqs" or "sqs-prefixed", for the core cases that run on each:
    ``@pytest.mark.parametrize("core_broker_url", CORE_BROKERS, indirect=True)``."""
    variant = getattr(request, "param", "redis")
    if variant == "redis":
        return str(request.getfixturevalue("redis_url"))
    return _sqs_broker(
        variant, request.getfixturevalue("elasticmq"), request.getfixturevalue("monkeypatch")
    )


@pytest.fixture
def queue() -> Iterator[str]:
    yield unique_queue()


@pytest.fixture(autouse=True)
def _close_producers() -> Iterator[None]:
    yield
    close_producers()
