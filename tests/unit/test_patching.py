"""The one wrap-and-restore helper our Celery and kombu hooks use (worker/patching.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from otel_celery_metrics.worker.patching import Wrapping


class Target:
    @staticmethod
    def call(x: int) -> int:
        return x


def _doubling(wrapping: Wrapping) -> Callable[[Callable[[int], int]], Callable[[int], int]]:
    def make(original: Callable[[int], int]) -> Callable[[int], int]:
        def call(x: int) -> int:
            return original(x) * 2 if wrapping.active else original(x)

        return call

    return make


def test_install_wraps_and_restore_puts_the_original_back() -> None:
    original = Target.call
    wrapping = Wrapping("Target.call")
    assert wrapping.install(Target, "call", _doubling(wrapping))
    assert Target.call(3) == 6
    assert Target.call.__wrapped__ is original  # type: ignore[attr-defined]
    assert wrapping.restore() is True
    assert Target.call is original
    assert Target.call(3) == 3


def test_a_later_wrapper_is_never_restored_over_and_ours_passes_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = Target.call
    ours = Wrapping("Target.call")
    ours.install(Target, "call", _doubling(ours))
    ours_wrapper = Target.call

    def theirs(x: int) -> int:  # another library wraps after us
        return ours_wrapper(x) + 1

    Target.call = staticmethod(theirs)  # type: ignore[method-assign,assignment]
    try:
        with caplog.at_level(logging.WARNING):
            assert ours.restore() is False
        assert Target.call is theirs  # their hook survives our uninstall
        assert Target.call(3) == 4  # ... and ours inside it no longer doubles
        assert "Target.call was wrapped again after our hook" in caplog.text
    finally:
        Target.call = staticmethod(original)  # type: ignore[method-assign,assignment]


def test_an_attribute_that_does_not_take_the_wrapper_is_reported() -> None:
    class Frozen:
        def __setattr__(self, name: str, value: Any) -> None:
            return None  # ignores every assignment

        def call(self, x: int) -> int:
            return x

    wrapping = Wrapping("Frozen.call")
    assert wrapping.install(Frozen(), "call", lambda original: lambda x: x) is False
    assert not wrapping.installed and not wrapping.active
