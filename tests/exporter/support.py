"""Helpers shared by the exporter tests: a fake clock, exposition parsing, deadlines."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from typing import TypeVar

from prometheus_client.parser import text_string_to_metric_families

from tests import support

T = TypeVar("T")


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of a Prometheus text exposition, read by
    prometheus_client's parser (the one the in-process tests use, tests/support.py)."""
    return [(name, dict(labels), v) for (name, labels), v in _samples_of(text)]


def _samples_of(text: str) -> list[tuple[tuple[str, frozenset[tuple[str, str]]], float]]:
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append(((s.name, frozenset(s.labels.items())), float(s.value)))
    return out


def value(text: str, name: str, /, **labels: str) -> float | None:
    """The one sample of ``name`` whose labels include ``labels``; None if absent."""
    found = [v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def total(text: str, name: str, /, **labels: str) -> float:
    return sum(v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items())


def promtool_check(text: str) -> None:
    """Fail unless ``promtool check metrics`` accepts the exposition (lint warnings aside)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is required (Debian package prometheus)"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    errors = [
        line
        for line in result.stderr.decode().splitlines() + result.stdout.decode().splitlines()
        if line and "error" in line.lower()
    ]
    assert not errors, "\n".join(errors)


def wait_for(predicate: Callable[[], T], timeout: float, what: str, every: float = 0.2) -> T:
    """:func:`tests.support.wait_for` (the one implementation), in the exporter tests' order."""
    return support.wait_for(predicate, timeout=timeout, interval=every, what=what)
