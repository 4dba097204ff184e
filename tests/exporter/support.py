"""Helpers shared by the exporter tests: a fake clock, exposition parsing, deadlines."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = dict(_LABEL.findall(match.group(2) or ""))
        out.append((match.group(1), labels, float(match.group(3))))
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
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = predicate()
        except (OSError, AssertionError) as exc:
            last = None
            error: BaseException | None = exc
        else:
            error = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} (last: {last!r}, error: {error!r})"
            )
        time.sleep(every)
