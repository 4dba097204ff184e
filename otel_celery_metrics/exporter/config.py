"""The exporter's configuration as one typed object, and broker-URL masking.

The CLI builds an :class:`ExporterConfig`; the service and its parts take the object
(never the CLI's parsed arguments), so tests and embedders construct it directly.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from otel_celery_metrics.core import values
from otel_celery_metrics.core.metric_table import DEFAULT_SECONDS_BUCKETS

#: kombu's Redis defaults: priority lists are ``<queue><sep><step>`` for every step but 0.
DEFAULT_PRIORITY_SEPARATOR = "\x06\x16"
DEFAULT_PRIORITY_STEPS: tuple[int, ...] = (0, 3, 6, 9)


@dataclass(frozen=True)
class ExporterConfig:
    """Everything the exporter can be told; defaults are the documented ones."""

    broker_url: str = "redis://localhost:6379/0"
    #: TLS to the broker (amqps://, rediss://), as Celery's ``broker_use_ssl``: the CA
    #: bundle that signed the broker's certificate ("" = the system's CAs) ...
    broker_tls_ca_file: str = ""
    #: ... a client certificate (PEM, may hold its key too) and its key, for a broker
    #: that asks for one ...
    broker_tls_cert_file: str = ""
    broker_tls_key_file: str = ""
    #: ... and what is verified: "full" (chain and host name), "ca" (chain), "none".
    broker_tls_verify: str = "full"
    host: str = "0.0.0.0"
    port: int = 9808
    #: KEDA external scaler gRPC port (docs/autoscaling.md); 0: off.
    keda_scaler_port: int = 0
    #: Histogram boundaries (seconds) of the runtime histogram.
    buckets: tuple[float, ...] = DEFAULT_SECONDS_BUCKETS
    #: Histogram boundaries (seconds) of the queue-wait histogram.
    queue_wait_buckets: tuple[float, ...] = DEFAULT_SECONDS_BUCKETS
    #: Queues probed for depth in addition to those workers report consuming from.
    queues: tuple[str, ...] = ()
    #: "auto" (raw Redis pub/sub for redis://, our AMQP reader for amqp://, amqps://,
    #: pyamqp://, kombu otherwise), "redis", "amqp" or "kombu".
    receiver: str = "auto"
    #: Seconds without a heartbeat before a worker reads 0.
    worker_timeout: float = 60.0
    #: Seconds without a heartbeat before a worker's series are removed.
    worker_forget_after: float = 600.0
    queue_poll_interval: float = 10.0
    inspect_interval: float = 30.0
    #: Bound on every broker round trip a background probe makes.
    probe_timeout: float = 3.0
    #: Seconds a connection may hear nothing from the broker before it is declared down
    #: (a hung broker or a half-open connection). Redis is sent a PING when a third of it
    #: passes in silence; RabbitMQ is asked for heartbeats every half of it.
    broker_heartbeat: float = 10.0
    #: kombu's broker_transport_options, typed (--broker-transport-option key=value):
    #: ``master_name`` names the Sentinel primary; on SQS the workers' options that say
    #: where things are (region, queue_name_prefix, predefined_queues, is_secure). Read,
    #: never logged (SQS predefined_queues may hold keys).
    broker_transport_options: dict[str, Any] = field(default_factory=dict)
    #: Periodically broadcast enable_events to the workers.
    enable_events: bool = False
    enable_events_interval: float = 60.0
    #: Seconds of task activity without task events before the events-disabled alarm.
    events_missing_after: float = 30.0
    max_task_names: int = 500
    max_queues: int = 100
    max_workers: int = 1000
    #: fnmatch patterns; empty allow list = everything allowed. Deny wins.
    task_allow: tuple[str, ...] = ()
    task_deny: tuple[str, ...] = ()
    queue_allow: tuple[str, ...] = ()
    queue_deny: tuple[str, ...] = ()
    #: Add the worker's hostname to task series (opt-in: it multiplies series).
    task_hostname_label: bool = False
    #: Publish danihodovic/celery-exporter's names instead of the seed's task series.
    danihodovic_names: bool = False
    #: Queue used when an event does not say (no task-sent event for the task).
    default_queue: str = "unknown"
    priority_separator: str = DEFAULT_PRIORITY_SEPARATOR
    priority_steps: tuple[int, ...] = DEFAULT_PRIORITY_STEPS
    #: kombu's ``global_keyprefix`` transport option, when the app sets one.
    redis_key_prefix: str = ""
    #: Task ids remembered to attach names and queues to later events.
    max_tracked_tasks: int = 200_000
    #: Raw event bytes buffered between the socket and the handlers.
    max_backlog_bytes: int = 512 * 1024 * 1024
    #: RabbitMQ event queue: x-message-ttl (seconds an event may wait in it).
    event_queue_ttl: float = 300.0
    #: RabbitMQ event queue: x-expires (seconds it outlives our connection).
    event_queue_expires: float = 60.0
    #: RabbitMQ event queue: x-max-length (messages); past it the oldest are dropped.
    event_queue_max_length: int = 1_000_000
    #: RabbitMQ event queue: x-max-length-bytes (message bodies).
    event_queue_max_bytes: int = 256 * 1024 * 1024
    #: Health fails when the receive loop has not turned for this long.
    stuck_after: float = 30.0
    reconnect_initial: float = 0.5
    reconnect_max: float = 30.0
    #: Seconds: the longest queue wait recorded; longer ones are refused and counted.
    max_queue_wait: float = values.DEFAULT_MAX_QUEUE_WAIT
    #: Seconds: the longest task runtime recorded.
    max_runtime: float = values.DEFAULT_MAX_RUNTIME
    #: Seconds a publish time (or ETA) may lie after the task's start and count as 0.
    clock_skew_tolerance: float = values.DEFAULT_CLOCK_SKEW_TOLERANCE
    log_level: str = "INFO"
    #: Prometheus exporter-toolkit web config (TLS, basic auth) for /metrics and /health.
    web_config_file: str = ""
    #: Where metrics go: "prometheus" (/metrics), "otlp" (pushed), or both.
    metrics_exporters: tuple[str, ...] = ("prometheus",)
    #: OTLP: "http/protobuf" or "grpc"; the endpoint, headers etc. are the SDK's variables.
    otlp_protocol: str = "http/protobuf"
    #: OTLP: "cumulative" (what Prometheus stores), "delta" or "lowmemory".
    otlp_temporality: str = "cumulative"
    #: OTLP: seconds between exports.
    otlp_export_interval: float = 60.0
    #: Labels added to every series of both outputs, as (name, value) pairs.
    static_labels: tuple[tuple[str, str], ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def bounds(self) -> values.Bounds:
        """The plausible range of times in events (:mod:`otel_celery_metrics.core.values`)."""
        return values.Bounds(self.max_queue_wait, self.max_runtime, self.clock_skew_tolerance)

    @property
    def masked_broker_url(self) -> str:
        return mask_url(self.broker_url)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe to log)."""
    if ";" in url:
        # kombu's failover list (amqp://a//;amqp://b//): every URL has its own password.
        return ";".join(mask_url(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:***@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        # Unparseable: show the scheme only rather than risk echoing a secret.
        return url.split(":", 1)[0] + "://***"


class NameFilter:
    """Allow/deny fnmatch patterns compiled once; deny wins over allow."""

    def __init__(self, allow: tuple[str, ...], deny: tuple[str, ...]) -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny)
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            hit = not (self._deny and self._deny.match(name)) and bool(
                self._allow is None or self._allow.match(name)
            )
            # Bounded: hostile name floods are capped elsewhere, but keep this flat too.
            if len(self._cache) < 10_000:
                self._cache[name] = hit
        return hit


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))
