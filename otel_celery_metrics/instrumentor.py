"""``CeleryMetricsInstrumentor``: wires the metric table, outcomes, receivers and prefork bridge.

Found by ``opentelemetry-instrument`` through the ``celery_metrics`` entry point (not
``celery``, which opentelemetry-instrumentation-celery owns), so
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=celery_metrics`` turns off exactly this one.
Nothing happens at import; ``instrument()`` creates instruments and connects receivers,
``uninstrument()`` disconnects exactly those.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import MeterProvider, get_meter, get_meter_provider

from otel_celery_metrics import _green, _worker_state
from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._outcomes import RequestHooks, SpanJoin, TaskOutcomes
from otel_celery_metrics._prefork import CollectionFence, ForkBridge, SwitchableSink
from otel_celery_metrics._receivers import TaskReceivers
from otel_celery_metrics._recorder import Recorder
from otel_celery_metrics._safety import FailureLog
from otel_celery_metrics.package import _instruments
from otel_celery_metrics.settings import Settings, settings_from_env
from otel_celery_metrics.version import __version__

_logger = logging.getLogger("otel_celery_metrics")

#: The meter (instrumentation scope) name; distinct from opentelemetry-instrumentation-celery's.
METER_NAME = "otel_celery_metrics"
_DROPPED = mt.METRIC_INDEX[mt.SELF_DROPPED.name]


@dataclass
class _Wiring:
    recorder: Recorder
    sink: SwitchableSink
    receivers: TaskReceivers
    bridge: ForkBridge
    hooks: RequestHooks
    exemplars: _ExemplarSwitch


class CeleryMetricsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Records Celery task metrics (see ``docs/metrics.md``) through OpenTelemetry.

    ``instrument()`` keyword arguments, all optional: ``meter_provider``, ``settings``
    (a :class:`Settings`; default: parsed from ``environ``), ``environ`` (default
    :data:`os.environ`).
    """

    _wiring: _Wiring | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        settings = kwargs.get("settings")
        if settings is None:
            environ: Mapping[str, str] = kwargs.get("environ") or os.environ
            settings, errors = settings_from_env(environ)
            for error in errors:
                _logger.error("otel-celery-metrics: %s", error)
        provider: MeterProvider = kwargs.get("meter_provider") or get_meter_provider()
        meter = get_meter(METER_NAME, __version__, provider)
        failures = FailureLog()
        default_queue = settings.default_queue
        degraded = _green.check_green_pool()
        recorder = Recorder(
            meter,
            settings,
            failures,
            observers={
                mt.TASKS_EXECUTING.name: lambda: _worker_state.executing(default_queue),
                mt.TASKS_PREFETCHED.name: lambda: _worker_state.prefetched(default_queue),
                mt.SELF_DEGRADED.name: lambda: _degraded(degraded),
            },
        )
        delta_readers = _attach_histograms(provider, recorder)
        if delta_readers is None:
            recorder.use_api_for_histograms(meter)
        else:
            recorder.track_interval = delta_readers > 0
        spans = SpanJoin()
        sink = SwitchableSink(recorder, spans)
        # Failures inside metrics code count as dropped measurements, through whatever
        # sink this process has (a pool child's failures reach the main process too).
        failures.on_failure = lambda n: sink.emit(_DROPPED, n, ("internal_error",))
        bridge = ForkBridge(
            recorder, sink, spans, failures,
            on_pool_child_start=lambda: _silence_child_readers(provider),
        )
        # After _attach_histograms: the fence wraps our histogram producer too.
        _fence_collections(provider, bridge.fence)
        recorder.before_collect = bridge.drain_now
        outcomes = TaskOutcomes(recorder, failures, default_queue=default_queue)
        hooks = RequestHooks(outcomes)
        receivers = TaskReceivers(sink, failures, default_queue=default_queue, outcomes=outcomes)
        exemplars = _ExemplarSwitch(settings, receivers, outcomes, bridge)
        hooks.install()
        receivers.connect()
        bridge.install()
        exemplars.install()
        _tune_readers(provider, settings)
        _limit_exporter_logs()
        self._wiring = _Wiring(recorder, sink, receivers, bridge, hooks, exemplars)

    def _uninstrument(self, **kwargs: Any) -> None:
        wiring = self._wiring
        if wiring is None:
            return
        wiring.exemplars.uninstall()
        wiring.receivers.disconnect()
        wiring.hooks.uninstall()
        wiring.bridge.uninstall()
        self._wiring = None


class _ExemplarSwitch:
    """Turns on exemplar span capture when the worker starts, if there are spans to link.

    Decided at ``worker_init`` (main process, before the pool forks), when every
    instrumentor has run: the spans come from opentelemetry-instrumentation-celery, which
    ``opentelemetry-instrument`` may load after us. Without it there is no task span, and
    the two per-task receivers would be pure cost.
    """

    def __init__(
        self,
        settings: Settings,
        receivers: TaskReceivers,
        outcomes: TaskOutcomes,
        bridge: ForkBridge,
    ) -> None:
        self._settings = settings
        self._receivers = receivers
        self._outcomes = outcomes
        self._bridge = bridge
        self.enabled = False

    def install(self) -> None:
        from celery import signals

        signals.worker_init.connect(
            self._on_worker_init, weak=False, dispatch_uid=f"otel_celery_metrics.{id(self)}"
        )

    def uninstall(self) -> None:
        from celery import signals

        signals.worker_init.disconnect(dispatch_uid=f"otel_celery_metrics.{id(self)}")

    def _on_worker_init(self, **_: Any) -> None:
        try:
            if self._settings.exemplars != "off" and _celery_tasks_traced():
                self.enable()
        except Exception as exc:  # noqa: BLE001 - exemplars are optional
            _logger.warning("otel-celery-metrics: exemplars not enabled: %s", exc)

    def enable(self) -> None:
        if self.enabled:
            return
        self._outcomes.take_span = self._bridge.take_span
        self._receivers.connect_exemplars()
        self.enabled = True


def _degraded(reason: str | None) -> list[tuple[float, tuple[str, ...]]]:
    """``otel_celery_metrics_degraded``: 1 for the reason that applies, 0 for the others."""
    return [(1.0 if r == reason else 0.0, (r,)) for r in mt.DEGRADED_REASONS]


def _celery_tasks_traced() -> bool:
    """True when opentelemetry-instrumentation-celery creates task spans in this worker."""
    try:
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
    except ImportError:
        return False
    return bool(CeleryInstrumentor().is_instrumented_by_opentelemetry)  # type: ignore[no-untyped-call]


def _attach_histograms(provider: Any, recorder: Recorder) -> int | None:
    try:
        from otel_celery_metrics._sdk_setup import attach_histograms

        return attach_histograms(provider, recorder.histogram_points, METER_NAME, __version__)
    except Exception as exc:  # noqa: BLE001 - fall back to recording through the API
        _logger.warning("otel-celery-metrics: recording histograms through the API: %s", exc)
        return None


def _tune_readers(provider: Any, settings: Settings) -> None:
    try:
        from otel_celery_metrics._sdk_setup import tune_prometheus_readers

        tune_prometheus_readers(provider, settings.prometheus_scope_labels)
    except Exception as exc:  # noqa: BLE001 - a tuning problem must not stop instrumenting
        _logger.warning("otel-celery-metrics: could not adjust Prometheus readers: %s", exc)


def _limit_exporter_logs() -> None:
    # One line per failed export while the Collector is unreachable, not one per retry.
    try:
        from otel_celery_metrics._sdk_setup import limit_exporter_logs

        limit_exporter_logs()
    except Exception as exc:  # noqa: BLE001 - logging hygiene must not stop instrumenting
        _logger.warning("otel-celery-metrics: could not limit exporter logs: %s", exc)


def _fence_collections(provider: Any, fence: CollectionFence) -> None:
    try:
        from otel_celery_metrics._sdk_setup import fence_collections

        fence_collections(provider, fence.collecting)
    except Exception as exc:  # noqa: BLE001 - fork safety must not stop instrumenting
        _logger.warning("otel-celery-metrics: could not fence metric collections: %s", exc)


def _silence_child_readers(provider: Any) -> None:
    from otel_celery_metrics._sdk_setup import silence_exporting_readers

    silence_exporting_readers(provider)
