"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

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


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on (SO_REUSEADDR does not get around it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])
