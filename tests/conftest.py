"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.sqs_server import ElasticMQ, running_elasticmq

# Hypothesis profiles for the property-based tests (tests/**/test_*_properties.py).
# "ci", the default: bounded and derandomized, so a CI run is reproducible and keeps to
# its time budget. "dev": random examples, same bound. "long": many more, for a search
# before a release (HYPOTHESIS_PROFILE=long; see bench/README.md).
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None,
                          database=None, print_blob=True, suppress_health_check=_QUIET)
settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=_QUIET)
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


_INTEGRATION_DIRS = ("tests/integration/", "tests/exporter/integration/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under an integration folder is marked ``integration`` (a ``pytestmark``
    in a conftest.py is ignored by pytest, so the folders' own conftests cannot do it):
    ``-m "not integration"`` then runs exactly the tests that need no broker."""
    root = config.rootpath
    for item in items:
        where = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        if where.startswith(_INTEGRATION_DIRS):
            item.add_marker(pytest.mark.integration)


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
