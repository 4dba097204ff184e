"""Hooking a Recorder's histograms into an SDK provider the way the instrumentor does."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.recording.recorder import Recorder
from otel_celery_metrics.sdk_adapter import Fence, SdkAdapter


def _nothing() -> None:
    return None


def hooked_recorder(
    provider: Any,
    *args: Any,
    before_collect: Callable[[], None] = _nothing,
    fence: Fence = contextlib.nullcontext,
    **kwargs: Any,
) -> tuple[Recorder, SdkAdapter]:
    """A Recorder on ``provider``'s meter "t" with its histograms in every reader's collection."""
    adapter = SdkAdapter(provider, "t", "0")
    assert adapter.hookable, adapter.problem
    recorder = Recorder(
        provider.get_meter("t"), *args, track_interval=adapter.delta_readers > 0, **kwargs
    )
    adapter.apply(recorder.histogram_points, before_collect, fence, scope_labels=False)
    return recorder, adapter
