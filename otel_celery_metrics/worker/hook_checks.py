"""Fail loud: at worker start, each hook checks it took effect.

Our hooks reach into Celery and the OpenTelemetry SDK (a request class Celery's worker
builds, the readers' collection, the pool children's inherited exporters). A dependency
release that changes one of them must not turn a dashboard quietly empty. When a hook did
not take effect, :class:`HookReport` logs one ERROR line naming the hook, the reason and the
installed versions of Celery and the SDK, and sets ``otel_celery_metrics_hook_inactive``
for that hook to 1 (through the process' sink, so a pool child's report reaches the main
process). Tasks keep running either way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.recording.sinks import MeasurementSink

_logger = logging.getLogger(__name__)
_INACTIVE = mt.METRIC_INDEX[mt.SELF_HOOK_INACTIVE.name]

Check = Callable[[], "str | None"]


def installed_versions() -> str:
    """``celery X, opentelemetry-sdk Y`` as installed."""
    parts = []
    for dist in ("celery", "opentelemetry-sdk"):
        try:
            parts.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


class HookReport:
    """Runs one hook's check; on a problem, one ERROR line and the self-metric."""

    def __init__(
        self, sink: MeasurementSink, versions: Callable[[], str] = installed_versions,
        logger: logging.Logger = _logger,
    ) -> None:
        self._sink = sink
        self._versions = versions
        self._logger = logger

    def check(self, hook: str, check: Check) -> bool:
        """True if ``hook`` is active. Never raises: a failing check counts as inactive."""
        try:
            problem = check()
        except Exception as exc:  # noqa: BLE001 - the check itself broke: say so
            problem = f"its check failed: {type(exc).__name__}: {exc}"
        if problem is None:
            return True
        self._logger.error(
            "otel-celery-metrics: the %s hook is inactive: %s. Installed: %s. The metrics it "
            "feeds are missing or incomplete (%s{hook=\"%s\"} is 1); tasks are unaffected.",
            hook, problem, self._versions(), mt.SELF_HOOK_INACTIVE.prometheus_name, hook,
        )
        try:
            self._sink.emit(_INACTIVE, 1, (hook,))
            self._sink.flush()
        except Exception:
            self._logger.debug("could not set the hook self-metric", exc_info=True)
        return False


class WorkerStartChecks:
    """Runs every check when the worker is ready (``worker_ready``, main process): by then
    the worker has built each task's request class and its readers are in place."""

    def __init__(self, checks: Mapping[str, Check], report: HookReport) -> None:
        self._checks = dict(checks)
        self._report = report

    def install(self) -> None:
        from celery import signals

        signals.worker_ready.connect(self.run, weak=False, dispatch_uid=self._uid())

    def uninstall(self) -> None:
        from celery import signals

        signals.worker_ready.disconnect(dispatch_uid=self._uid())

    def _uid(self) -> str:
        return f"otel_celery_metrics.hook_checks.{id(self)}"

    def run(self, **_: Any) -> list[str]:
        """The inactive hooks (each already reported)."""
        inactive = [
            hook for hook, check in self._checks.items()
            if not self._report.check(hook, check)
        ]
        if not inactive:
            _logger.info(
                "otel-celery-metrics: hooks active: %s (%s)",
                ", ".join(self._checks), installed_versions(),
            )
        return inactive
