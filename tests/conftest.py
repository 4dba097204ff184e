"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

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
