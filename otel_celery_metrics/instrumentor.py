"""``CeleryMetricsInstrumentor``: wires the metric table, receivers and prefork bridge.

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

from otel_celery_metrics import _worker_state
from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._prefork import ForkBridge, SwitchableSink
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
        recorder = Recorder(
            meter,
            settings,
            failures,
            observers={
                mt.TASKS_EXECUTING.name: lambda: _worker_state.executing(default_queue),
                mt.TASKS_PREFETCHED.name: lambda: _worker_state.prefetched(default_queue),
            },
        )
        sink = SwitchableSink(recorder)
        # Failures inside metrics code count as dropped measurements, through whatever
        # sink this process has (a pool child's failures reach the main process too).
        failures.on_failure = lambda n: sink.emit(_DROPPED, n, ("internal_error",))
        receivers = TaskReceivers(sink, failures, default_queue=default_queue)
        bridge = ForkBridge(
            recorder, sink, failures, on_pool_child_start=lambda: _silence_child_readers(provider)
        )
        receivers.connect()
        bridge.install()
        _tune_readers(provider, settings)
        _limit_exporter_logs()
        self._wiring = _Wiring(recorder, sink, receivers, bridge)

    def _uninstrument(self, **kwargs: Any) -> None:
        wiring = self._wiring
        if wiring is None:
            return
        wiring.receivers.disconnect()
        wiring.bridge.uninstall()
        self._wiring = None


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


def _silence_child_readers(provider: Any) -> None:
    from otel_celery_metrics._sdk_setup import silence_exporting_readers

    silence_exporting_readers(provider)
