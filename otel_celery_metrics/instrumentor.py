"""``CeleryMetricsInstrumentor``: wires the metric table, outcomes, receivers and prefork bridge.

Found by ``opentelemetry-instrument`` through the ``celery_metrics`` entry point (not
``celery``, which opentelemetry-instrumentation-celery owns), so
``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=celery_metrics`` turns off exactly this one.
Nothing happens at import; ``instrument()`` creates instruments and connects receivers,
``uninstrument()`` disconnects exactly those.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import MeterProvider, get_meter, get_meter_provider

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.package import _instruments
from otel_celery_metrics.pool.prefork import ForkBridge, SwitchableSink
from otel_celery_metrics.pool.relay import PoolRelay
from otel_celery_metrics.recording.recorder import Recorder
from otel_celery_metrics.recording.settings import Settings, settings_from_env
from otel_celery_metrics.sdk_adapter import SdkAdapter
from otel_celery_metrics.version import __version__
from otel_celery_metrics.worker import green as _green
from otel_celery_metrics.worker import state as _worker_state
from otel_celery_metrics.worker.beat import BeatHooks
from otel_celery_metrics.worker.hook_checks import HookReport, WorkerStartChecks
from otel_celery_metrics.worker.outcomes import RequestHooks, SpanJoin, TaskOutcomes
from otel_celery_metrics.worker.process_role import Role, process_role
from otel_celery_metrics.worker.signals import TaskReceivers

_logger = logging.getLogger(__name__)

#: The meter (instrumentation scope) name; distinct from opentelemetry-instrumentation-celery's.
METER_NAME = "otel_celery_metrics"
_DROPPED = mt.METRIC_INDEX[mt.SELF_DROPPED.name]
_RELAYED = mt.METRIC_INDEX[mt.SELF_RELAYED.name]
_OVERFLOW = mt.METRIC_INDEX[mt.SELF_OVERFLOW.name]


@dataclass
class _Wiring:
    adapter: SdkAdapter
    recorder: Recorder
    receivers: TaskReceivers
    bridge: ForkBridge
    hooks: RequestHooks
    exemplars: _ExemplarSwitch
    checks: WorkerStartChecks
    worker_view: _worker_state.WorkerView
    beat: BeatHooks


class CeleryMetricsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Records Celery task metrics (see ``docs/metrics.md``) through OpenTelemetry.

    ``instrument()`` keyword arguments, all optional: ``meter_provider``, ``settings``
    (a :class:`Settings`; default: parsed from ``environ``), ``environ`` (default
    :data:`os.environ`), ``role`` (a :class:`Role`; default: from this process' command
    line). In a ``celery multi`` launcher, a ``celery worker --detach`` process that is
    about to re-execute itself, and short-lived commands (``celery inspect``, ``call``,
    ...) it does nothing and logs nothing: they neither serve nor export metrics.
    """

    _wiring: _Wiring | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments

    def _instrument(self, **kwargs: Any) -> None:
        _restore_metrics_exporters()
        role: Role = kwargs.get("role") or process_role()
        if not role.serves_metrics:
            return
        settings = kwargs.get("settings")
        if settings is None:
            environ: Mapping[str, str] = kwargs.get("environ") or os.environ
            settings, errors = settings_from_env(environ)
            for error in errors:
                _logger.error("otel-celery-metrics: %s", error)
        provider: MeterProvider = kwargs.get("meter_provider") or get_meter_provider()
        meter = get_meter(METER_NAME, __version__, provider)
        # Only reads the provider; apply() below makes the changes, undo() reverts them.
        adapter = SdkAdapter(provider, METER_NAME, __version__)
        default_queue = settings.default_queue
        degraded = _green.check_green_pool()
        view = _worker_state.WorkerView(default_queue)
        # The recorder counts failures of its own code itself (it is the main process'
        # aggregate: nothing to forward).
        recorder = Recorder(
            meter,
            settings,
            observers={
                mt.TASKS_EXECUTING.name: view.executing,
                mt.TASKS_PREFETCHED.name: view.prefetched,
                mt.TASKS_RESERVED.name: view.reserved,
                mt.TASKS_SCHEDULED.name: view.scheduled,
                mt.TASKS_EXECUTING_OLDEST_AGE.name: view.oldest_executing_age,
                mt.TASKS_PAST_SOFT_TIME_LIMIT.name: view.past_soft_time_limit,
                mt.WORKER_POOL_PROCESSES.name: view.pool_processes,
                mt.WORKER_POOL_MAX_PROCESSES.name: view.pool_max_processes,
                mt.WORKER_QUEUE_PROCESSES.name: view.queue_processes,
                mt.SELF_DEGRADED.name: lambda: _degraded(degraded),
            },
            histograms_via_api=not adapter.hookable,
            track_interval=adapter.delta_readers > 0,
        )
        spans = SpanJoin()
        sink = SwitchableSink(recorder, spans)
        # Failures inside the rest of our code count as dropped measurements through this
        # process' sink: a pool child's reach the main process too.
        failures = FailureLog(on_failure=functools.partial(_count_internal_error, sink))
        report = HookReport(sink)

        def silence_pool_child() -> None:
            report.check("pool_child_silencing", adapter.silence_pool_child)

        relay = _pool_relay(provider, recorder, failures) if settings.relay else None
        bridge = ForkBridge(
            recorder, sink, spans, failures, on_pool_child_start=silence_pool_child,
            relay=relay,
        )
        outcomes = TaskOutcomes(
            recorder, failures, default_queue=default_queue, take_span=bridge.take_span,
            bounds=settings.bounds(),
        )
        hooks = RequestHooks(outcomes)
        receivers = TaskReceivers(sink, failures, default_queue=default_queue, outcomes=outcomes)
        exemplars = _ExemplarSwitch(settings, receivers, outcomes)
        checks = WorkerStartChecks(
            {"request_class": hooks.problem, "collection": adapter.collection_problem}, report
        )
        # Beat sends from its main process (no pool): straight into the Recorder.
        beat = BeatHooks(recorder, failures, bounds=settings.bounds())
        # Known before anything is installed, so that a failure part-way undoes what was
        # (every uninstall step is a no-op for what was not installed).
        self._wiring = _Wiring(
            adapter, recorder, receivers, bridge, hooks, exemplars, checks, view, beat
        )
        try:
            adapter.apply(
                histograms=recorder.histogram_points,
                before_collect=bridge.drain_now,
                fence=bridge.fence.collecting,
                scope_labels=settings.prometheus_scope_labels,
            )
            if relay is not None:
                # Through the adapter's hook: inside the fork fence, undone with the adapter.
                relay.attach(adapter)
            hooks.install()
            receivers.connect()
            bridge.install()
            exemplars.install()
            checks.install()
            view.install()
            beat.install()
        except Exception as exc:
            # opentelemetry-instrument re-raises an instrumentor's exception and skips every
            # instrumentor after it: say it once, undo ours, and let the rest load.
            _logger.error(
                "otel-celery-metrics: could not install the Celery instrumentation (%s: %s); "
                "it is removed again and this process records no Celery metrics",
                type(exc).__name__, exc, exc_info=exc,
            )
            self._uninstrument()

    def _uninstrument(self, **kwargs: Any) -> None:
        wiring = self._wiring
        if wiring is None:
            return
        wiring.beat.uninstall()
        wiring.worker_view.uninstall()
        wiring.checks.uninstall()
        wiring.exemplars.uninstall()
        wiring.receivers.disconnect()
        wiring.hooks.uninstall()
        wiring.bridge.uninstall()
        # The provider as we found it: readers unhooked, our instruments report nothing
        # until a later instrument() attaches a new Recorder to them.
        wiring.adapter.undo()
        wiring.recorder.detach()
        self._wiring = None


class _ExemplarSwitch:
    """Turns on exemplar span capture when the worker starts, if there are spans to link.

    Decided at ``worker_init`` (main process, before the pool forks), when every
    instrumentor has run: the spans come from opentelemetry-instrumentation-celery, which
    ``opentelemetry-instrument`` may load after us. Without it there is no task span, and
    the two per-task receivers would be pure cost.
    """

    def __init__(
        self, settings: Settings, receivers: TaskReceivers, outcomes: TaskOutcomes
    ) -> None:
        self._settings = settings
        self._receivers = receivers
        self._outcomes = outcomes
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
        self._outcomes.enable_exemplars()
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


def _restore_metrics_exporters() -> None:
    # Normally done by the SDK's post-init hook already; see the function's docstring.
    try:
        from otel_celery_metrics.endpoint.sdk_hooks import restore_metrics_exporters

        restore_metrics_exporters()
    except Exception as exc:  # noqa: BLE001 - must not stop instrumenting
        _logger.warning("otel-celery-metrics: could not restore OTEL_METRICS_EXPORTER: %s", exc)


def _pool_relay(provider: Any, recorder: Recorder, failures: FailureLog) -> PoolRelay | None:
    """The pool-child relay (attached to the readers through the SDK adapter)."""
    try:
        from otel_celery_metrics.pool.relay_store import RelayStore

        store = RelayStore(
            on_overflow=lambda n: recorder.emit(_OVERFLOW, n, ("series",)),
        )
        return PoolRelay(
            provider, failures,
            count=lambda signal, n: recorder.emit(_RELAYED, n, (signal,)),
            skip_scopes=frozenset({METER_NAME}),
            store=store,
        )
    except Exception as exc:  # noqa: BLE001 - the relay must not stop instrumenting
        failures.record("setting up the pool-child relay", exc)
        return None


def _count_internal_error(sink: SwitchableSink, n: int) -> None:
    sink.emit(_DROPPED, n, ("internal_error",))
