"""The exporter as one object: builds the parts, runs their threads, answers health.

Nothing happens at construction beyond building objects; :meth:`Exporter.start` starts
the threads and binds the port, :meth:`Exporter.stop` ends them. Registry, clock and
Celery app are injectable for tests and embedding.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core.web_serving import WebConfigFile
from otel_celery_metrics.exporter import broker_tls
from otel_celery_metrics.exporter.amqp_receiver import AmqpEventReceiver
from otel_celery_metrics.exporter.capabilities import BrokerCapabilities, detect
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.handlers import EventHandlers
from otel_celery_metrics.exporter.http import make_server
from otel_celery_metrics.exporter.instruments import (
    Histograms,
    Instruments,
    Sources,
    histogram_provider,
)
from otel_celery_metrics.exporter.keda_scaler import QueueView
from otel_celery_metrics.exporter.liveness import Liveness
from otel_celery_metrics.exporter.outputs import Outputs
from otel_celery_metrics.exporter.probes import InspectProbe, QueueDepthProbe, run_every
from otel_celery_metrics.exporter.receiver import (
    KombuReceiver,
    NoEventReceiver,
    RedisPubSubReceiver,
)
from otel_celery_metrics.exporter.store import Caps, CounterStore
from otel_celery_metrics.exporter.tracker import TaskTracker
from otel_celery_metrics.exporter.transport_options import scheme_of

_logger = logging.getLogger(__name__)

#: Forgotten workers after which the observable instruments are rebuilt (see
#: :mod:`.instruments`); well below the SDK's 2000 attribute sets per instrument.
REBUILD_AFTER_FORGOTTEN = 500
#: URL scheme -> receiver for ``--receiver=auto``; the rest go through kombu.
_AUTO_RECEIVERS = {"redis": "redis", "amqp": "amqp", "amqps": "amqp", "pyamqp": "amqp"}


def make_app(config: ExporterConfig) -> Any:
    from celery import Celery

    app = Celery("otel-celery-exporter", broker=config.broker_url, set_as_current=False)
    app.conf.update(
        # TLS for every connection kombu opens for us: receivers, probes, broadcasts.
        broker_use_ssl=broker_tls.broker_use_ssl(config),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=config.probe_timeout,
        # --receiver=kombu's event queue (the amqp receiver declares its own with the
        # same settings): it goes event_queue_expires after we do, so restarts leak
        # nothing. Celery's default TTL drops events older than 5 s from it: a busy
        # exporter would lose counts silently. Five minutes rides out a pause, bounded.
        event_queue_expires=config.event_queue_expires,
        event_queue_ttl=config.event_queue_ttl,
        broker_transport_options=transport_options(config),
    )
    return app


def transport_options(config: ExporterConfig) -> dict[str, Any]:
    """kombu's transport options for every connection of ours; the user's win."""
    # The probes must not hang on a dead broker: bounded connect and socket waits, on
    # Redis (socket_*) and on py-amqp (connect_timeout comes from
    # broker_connection_timeout; read/write_timeout bound each round trip after the
    # handshake, which would otherwise wait for ever on a broker that hung after it).
    options: dict[str, Any] = {
        "socket_timeout": config.probe_timeout,
        "socket_connect_timeout": config.probe_timeout,
        "max_retries": 1,
    }
    if scheme_of(config.broker_url) in ("amqp", "amqps", "pyamqp"):
        options = {"read_timeout": config.probe_timeout,
                   "write_timeout": config.probe_timeout, "max_retries": 1}
    if config.redis_key_prefix:
        # The workers' kombu prefixes every key and channel: broadcasts (inspect, enable
        # events) and, over kombu, the event subscription must use the same prefix.
        options["global_keyprefix"] = config.redis_key_prefix
    options.update(config.broker_transport_options)
    return options


class Exporter:
    def __init__(
        self,
        config: ExporterConfig,
        *,
        registry: Any = None,
        app: Any = None,
        clock: Callable[[], float] = time.monotonic,
        capabilities: BrokerCapabilities | None = None,
        outputs: Outputs | None = None,
    ) -> None:
        from opentelemetry.sdk.metrics import MeterProvider  # noqa: F401 - fail early
        from prometheus_client import CollectorRegistry

        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.outputs = outputs if outputs is not None else Outputs(config, self.registry)
        self.app = app if app is not None else make_app(config)
        #: Whether events and broadcasts can reach us; without them, probe-only mode.
        self.capabilities = capabilities if capabilities is not None else detect(self.app)
        self._clock = clock
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._keda_server: Any = None
        self._web_config: WebConfigFile | None = None
        self._forgotten_at_build = 0
        # A worker first seen on the event bus gets an inspect at once, and queues an
        # inspect finds get a depth probe at once, instead of at the next intervals (30 s
        # and 10 s by default): queue series appear seconds after a worker starts.
        self._wake_inspect = threading.Event()
        self._wake_queues = threading.Event()
        self._workers_inspected: frozenset[str] = frozenset()

        self.caps = Caps({
            "task_name": config.max_task_names,
            "queue": config.max_queues,
            "worker": config.max_workers,
        })
        self.counters = CounterStore()
        self.tracker = TaskTracker(config.max_tracked_tasks)
        self.liveness = Liveness(
            timeout=config.worker_timeout,
            forget_after=config.worker_forget_after,
            events_missing_after=config.events_missing_after,
            caps=self.caps,
            clock=clock,
        )
        self.handlers: EventHandlers
        self.receiver: RedisPubSubReceiver | AmqpEventReceiver | KombuReceiver | NoEventReceiver
        self.queue_probe = QueueDepthProbe(
            config, self.app, self.liveness.queues, clock, sent_at=self._task_sent_at,
            started=self._task_started,
        )
        self.inspect_probe = InspectProbe(config, self.app, self.liveness, clock)
        self._build(clock)

    def _build(self, clock: Callable[[], float]) -> None:
        config = self.config
        receiver_kind = config.receiver
        if receiver_kind == "auto":
            receiver_kind = _AUTO_RECEIVERS.get(scheme_of(config.broker_url), "kombu")
        # Each object is built after what it needs: the handlers record into the histogram
        # provider, the receiver feeds the handlers, the instruments read all of them.
        provider = histogram_provider(self.outputs)
        self.handlers = EventHandlers(
            config, counters=self.counters, caps=self.caps, tracker=self.tracker,
            liveness=self.liveness, histograms=Histograms(provider, config), clock=clock,
        )
        if not self.capabilities.events:
            self.receiver = NoEventReceiver(config, clock)
        elif receiver_kind == "redis":
            self.receiver = RedisPubSubReceiver(
                config, self.handlers.handle, self.handlers.drop, clock
            )
        elif receiver_kind == "amqp":
            self.receiver = AmqpEventReceiver(
                config, self.app, self.handlers.handle, self.handlers.drop, clock
            )
        else:
            self.receiver = KombuReceiver(config, self.app, self.handlers.handle, clock)
        sources = Sources(
            counters=self.counters, caps=self.caps, handlers=self.handlers,
            liveness=self.liveness, receiver=self.receiver.status,
            queue_probe=lambda: self.queue_probe.result,
            inspect_probe=lambda: self.inspect_probe.result,
            queue_names=self.queue_probe.queue_names, clock=clock,
            event_stream=self.capabilities.events,
        )
        self.instruments = Instruments(config, self.outputs, sources, provider)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start serving; raises WebConfigError (before binding anything) on a bad web
        config file, OSError when the port cannot be bound."""
        cfg = self.config
        if cfg.web_config_file:
            self._web_config = WebConfigFile.open(cfg.web_config_file)
        self._server = make_server(
            cfg.host, cfg.port, self.registry if self.outputs.prometheus else None,
            self.instruments.collect_lock, self.health,
            web_config=self._web_config,
        )
        self._spawn("http", self._server.serve_forever)
        if cfg.keda_scaler_port:
            from otel_celery_metrics.exporter.keda_scaler import ExternalScaler, serve

            scaler = ExternalScaler(self.queue_view, cfg.queue_poll_interval, self._stop)
            self._keda_server = serve(scaler, cfg.host, cfg.keda_scaler_port)
        events = self.capabilities.events
        if events:
            self._spawn("receiver", lambda: self.receiver.run(self._stop))
        self._spawn("queues", lambda: run_every(
            cfg.queue_poll_interval, self._stop, self._poll_queues, "queue depth probe",
            wake=self._wake_queues))
        if events:
            self._spawn("inspect", lambda: run_every(
                cfg.inspect_interval, self._stop, self._inspect, "inspect probe",
                wake=self._wake_inspect))
        self._spawn("maintenance", lambda: run_every(
            1.0, self._stop, self.maintain, "maintenance"))
        web = self._web_config.current() if self._web_config else None
        _logger.info(
            "otel-celery-exporter serving %s://%s:%s/%s for broker %s (%s; receiver: "
            "%s; metrics to %s)%s",
            web.scheme if web else "http", cfg.host, self.port,
            "metrics" if self.outputs.prometheus else "health", cfg.masked_broker_url,
            broker_tls.describe(cfg), type(self.receiver).__name__, self.outputs.describe(),
            f"; web config {web.path}: {web.describe()}" if web else "",
        )
        if not events:
            ignored = " (--enable-events has no effect here)" if cfg.enable_events else ""
            _logger.warning("broker %s: %s%s", cfg.masked_broker_url,
                            self.capabilities.describe(), ignored)
        if cfg.broker_tls_verify == "none" and broker_tls.uses_tls(cfg):
            _logger.warning("the broker's TLS certificate is not verified "
                            "(--broker-tls-verify=none): anyone between us and it can read "
                            "and change the events")

    @property
    def port(self) -> int:
        return int(self._server.server_address[1]) if self._server else self.config.port

    def reload_web_config(self) -> None:
        """Re-read the web config file now (SIGHUP); a bad file closes the endpoint."""
        if self._web_config is not None:
            self._web_config.reload()

    def _poll_queues(self) -> None:
        self.queue_probe.poll()
        if isinstance(self.receiver, NoEventReceiver):
            self.receiver.probe_finished(self.queue_probe.result.last_error)

    def _inspect(self) -> None:
        self._workers_inspected = frozenset(self.liveness.up())
        known = self.liveness.queues()
        self.inspect_probe.maybe_enable_events()
        self.inspect_probe.poll()
        if self.liveness.queues() - known:
            self._wake_queues.set()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=f"otel-celery-exporter-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self.request_stop()
        if isinstance(self.receiver, KombuReceiver):
            self.receiver.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._keda_server is not None:
            self._keda_server.stop(1.0)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.instruments.shutdown()

    def request_stop(self) -> None:
        """Make :meth:`wait` return (safe from a signal handler)."""
        self._stop.set()
        self._wake_inspect.set()  # the probe loops wait on these, not on _stop
        self._wake_queues.set()

    def wait(self) -> None:
        """Block until :meth:`stop` (from a signal handler or another thread)."""
        while not self._stop.wait(1.0):
            pass

    # -- periodic upkeep and health --------------------------------------------------------

    def _task_sent_at(self, task_id: str) -> float | None:
        """The task-sent time of ``task_id``, if the exporter saw it (read by the queue
        probe's thread: one dict lookup, no lock needed for a value that may be stale)."""
        info = self.tracker.get(task_id)
        return info.sent if info is not None else None

    def queue_view(self, queue: str) -> QueueView | None:
        """The exporter's terms of ``queue`` for the KEDA scaler (docs/autoscaling.md):
        None when the queue probe has no result for it younger than three intervals."""
        result = self.queue_probe.result
        stale_after = 3 * self.config.queue_poll_interval + self.config.probe_timeout
        if result.taken_at is None or self._clock() - result.taken_at > stale_after:
            return None
        if queue not in result.values:
            return None
        executing = sum(n for (_, q), n in dict(self.handlers.executing).items() if q == queue)
        outstanding = result.values[queue][0] + result.unacked.get(queue, 0) + executing
        return QueueView(float(outstanding), float(result.unacked_scheduled.get(queue, 0)))

    def _task_started(self, task_id: str) -> bool:
        """Whether ``task_id`` is executing as far as the exporter's events tell (started,
        no terminal event yet; read by the queue probe's thread like ``_task_sent_at``)."""
        info = self.tracker.get(task_id)
        return info is not None and info.started is not None

    def maintain(self) -> None:
        gone = self.liveness.expire()
        for hostname in gone:
            self.handlers.forget_worker(hostname)
        forgotten = self.liveness.forgotten_total
        if forgotten - self._forgotten_at_build >= REBUILD_AFTER_FORGOTTEN:
            self._forgotten_at_build = forgotten
            if self.instruments.rebuild_observables():
                _logger.debug("rebuilt observable instruments after %d forgotten workers",
                              forgotten)
        self.liveness.without_task_events()  # logs newly detected workers
        if set(self.liveness.up()) - self._workers_inspected:
            self._wake_inspect.set()  # once per new worker: _inspect records it as seen

    def health(self) -> tuple[bool, list[str]]:
        problems = []
        status = self.receiver.status
        if not status.connected:
            problems.append(
                f"broker {self.config.masked_broker_url} unreachable: {status.last_error}"
                if status.last_error or self.capabilities.events else
                "probe-only mode: the queue depth probe has not answered yet"
            )
        stuck = status.stuck_for()
        if stuck > self.config.stuck_after:
            problems.append(f"event receiver stuck for {stuck:.0f}s")
        return not problems, problems

