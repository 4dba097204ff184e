"""Background probes: queue depth from the broker, workers' queues and pools from inspect.

On Redis the queue probe also peeks at the oldest message of each priority list (the
tail: kombu pushes on the left and consumers pop on the right; LINDEX reads without
consuming) and takes its time from our publish header (an instrumented producer), else
from the task-sent event of its task id when the exporter saw one. RabbitMQ cannot show a
queue's head without delivering it (basic.get), so there is no such age on RabbitMQ.
On SQS the counts come from ``GetQueueAttributes`` (:mod:`.sqs_depth`): waiting, in
flight and delayed, each its own series.

Scrapes never wait on these. Each probe runs on its own thread every interval with every
broker round trip bounded by ``probe_timeout``, publishes a complete new result at once
(a dict swapped in, never mutated), and records when it last succeeded; the scrape
serves the latest result and its age (``celery_exporter_probe_age_seconds``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER
from otel_celery_metrics.core.routing import Binding, bindings_from_reply
from otel_celery_metrics.exporter.broker_tls import broker_use_ssl
from otel_celery_metrics.exporter.config import ExporterConfig, NameFilter
from otel_celery_metrics.exporter.liveness import Liveness
from otel_celery_metrics.exporter.sqs_depth import SqsDepths

_logger = logging.getLogger(__name__)


class ProbeResult:
    """The latest values of one probe and when they were taken (monotonic)."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[int, int | None]] = {}
        #: Queue -> seconds its oldest waiting message had waited when the values were
        #: taken (0: empty). Queues whose oldest message has no known time are absent.
        self.oldest_age: dict[str, float] = {}
        #: SQS only: messages received and not yet deleted, and messages still delayed.
        self.in_flight: dict[str, int] = {}
        self.delayed: dict[str, int] = {}
        self.taken_at: float | None = None
        self.last_error: str | None = None


def redis_queue_keys(
    queue: str, separator: str, steps: tuple[int, ...], prefix: str = ""
) -> list[str]:
    """Every Redis list kombu keeps for ``queue``: one per priority step (0 is the bare name)."""
    return [prefix + (f"{queue}{separator}{step}" if step else queue) for step in steps]


def published_at(raw: bytes | str | None, sent_at: Callable[[str], float | None]) -> float | None:
    """When the kombu Redis message ``raw`` was published (seconds since the epoch): our
    publish header, else ``sent_at`` of its task id; None when neither is known."""
    if raw is None:
        return None
    try:
        headers = json.loads(raw).get("headers") or {}
    except (ValueError, AttributeError):
        return None
    stamp = headers.get(PUBLISHED_AT_HEADER)
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        return float(stamp)
    task_id = headers.get("id")
    return sent_at(task_id) if isinstance(task_id, str) else None


class QueueDepthProbe:
    """Messages (and, on RabbitMQ, consumers) per queue; on Redis the oldest one's age.

    ``sent_at`` gives the task-sent time of a task id the exporter saw (or None);
    ``wall_clock`` is seconds since the epoch, what message times are measured in.
    """

    def __init__(
        self,
        config: ExporterConfig,
        app: Any,
        queues: Callable[[], set[str]],
        clock: Callable[[], float],
        *,
        sent_at: Callable[[str], float | None] = lambda _task_id: None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._app = app
        self._queues = queues
        self._clock = clock
        self._sent_at = sent_at
        self._wall_clock = wall_clock
        self._filter = NameFilter(config.queue_allow, config.queue_deny)
        self.result = ProbeResult()
        scheme = config.broker_url.split(":", 1)[0].lower()
        self._redis = scheme in ("redis", "rediss")
        self._sqs = SqsDepths(config) if scheme == "sqs" else None
        self._client: Any = None

    def queue_names(self) -> list[str]:
        names = set(self._config.queues) | self._queues()
        return sorted(q for q in names if self._filter(q))[: self._config.max_queues]

    def poll(self) -> None:
        names = self.queue_names()
        result = ProbeResult()
        try:
            if self._sqs is not None:
                values = self._sqs_depths(names, result)
            elif self._redis:
                values = self._redis_depths(names, result.oldest_age)
            else:
                values = self._amqp_depths(names)
        except Exception as exc:  # noqa: BLE001 - the probe retries next interval
            self.result.last_error = f"{type(exc).__name__}: {exc}"[:300]
            self._client = None
            if self._sqs is not None:
                self._sqs.reset()
            _logger.warning(
                "queue depth probe failed on %s: %s", self._config.masked_broker_url,
                self.result.last_error,
            )
            return
        result.values = values
        result.taken_at = self._clock()
        self.result = result

    def _sqs_depths(
        self, names: list[str], result: ProbeResult
    ) -> dict[str, tuple[int, int | None]]:
        """Waiting messages per queue; fills ``result``'s in-flight and delayed counts."""
        assert self._sqs is not None
        out: dict[str, tuple[int, int | None]] = {}
        for name, (waiting, in_flight, delayed) in self._sqs.depths(names).items():
            out[name] = (waiting, None)  # SQS does not tell consumers
            result.in_flight[name] = in_flight
            result.delayed[name] = delayed
        return out

    def _redis_depths(
        self, names: list[str], oldest: dict[str, float]
    ) -> dict[str, tuple[int, int | None]]:
        """Depth per queue; fills ``oldest`` with each queue's oldest message age."""
        if self._client is None:
            import redis

            timeout = self._config.probe_timeout
            # Our own client, not kombu's: the TLS settings must be handed to it here
            # (redis-py's option names, as broker_use_ssl gives them for rediss://).
            tls = broker_use_ssl(self._config) or {}
            self._client = redis.Redis.from_url(
                self._config.broker_url, socket_timeout=timeout,
                socket_connect_timeout=timeout, **tls,
            )
        cfg = self._config
        pipe = self._client.pipeline(transaction=False)
        spans = []
        for name in names:
            keys = redis_queue_keys(name, cfg.priority_separator, cfg.priority_steps,
                                    cfg.redis_key_prefix)
            for key in keys:
                pipe.llen(key)
                pipe.lindex(key, -1)  # the oldest message of this priority list
            spans.append((name, len(keys)))
        replies = pipe.execute()
        now = self._wall_clock()
        out: dict[str, tuple[int, int | None]] = {}
        pos = 0
        for name, count in spans:
            lengths = replies[pos : pos + 2 * count : 2]
            tails = replies[pos + 1 : pos + 2 * count : 2]
            pos += 2 * count
            out[name] = (sum(int(v) for v in lengths), None)
            age = self._oldest_age(tails, now)
            if age is not None:
                oldest[name] = age
        return out

    def _oldest_age(self, tails: list[Any], now: float) -> float | None:
        """The oldest of the priority lists' tail messages: 0 when all are empty, None
        when a waiting tail's time is unknown (an age we cannot vouch for is not given)."""
        ages = [0.0]
        for raw in tails:
            if raw is None:
                continue
            stamp = published_at(raw, self._sent_at)
            if stamp is None:
                return None
            ages.append(max(0.0, now - stamp))  # clamped: the producer's clock may be ahead
        return max(ages)

    def _amqp_depths(self, names: list[str]) -> dict[str, tuple[int, int | None]]:
        out: dict[str, tuple[int, int | None]] = {}
        with self._app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1, timeout=self._config.probe_timeout)
            channel = conn.channel()
            try:
                for name in names:
                    try:
                        _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                    except conn.channel_errors:
                        # 404: the queue does not exist (yet); the error closed the channel.
                        channel = conn.channel()
                        continue
                    out[name] = (int(messages), int(consumers))
            finally:
                channel.close()
        return out


class InspectProbe:
    """Which queues each worker consumes and how many pool processes it has.

    Broadcast ``inspect`` waits ``probe_timeout`` for replies; that wait happens here, on
    the probe thread, never in a scrape. With ``--enable-events`` it also asks every
    worker to turn task events on, on its own interval.
    """

    def __init__(
        self,
        config: ExporterConfig,
        app: Any,
        liveness: Liveness,
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._app = app
        self._liveness = liveness
        self._clock = clock
        self.result = ProbeResult()
        self._last_enable: float | None = None

    def poll(self) -> None:
        try:
            inspect = self._app.control.inspect(timeout=self._config.probe_timeout)
            queues_reply = inspect.active_queues() or {}
            stats_reply = inspect.stats() or {}
        except Exception as exc:  # noqa: BLE001 - the probe retries next interval
            self.result.last_error = f"{type(exc).__name__}: {exc}"[:300]
            _logger.warning("inspect probe failed: %s", self.result.last_error)
            return
        queues: dict[str, tuple[str, ...]] = {}
        bindings: dict[str, tuple[Binding, ...]] = {}
        for hostname, infos in queues_reply.items():
            if isinstance(infos, list):
                queues[str(hostname)] = tuple(
                    str(i["name"]) for i in infos if isinstance(i, dict) and "name" in i
                )
                for i in infos:
                    if isinstance(i, dict) and "name" in i:
                        bindings[str(i["name"])] = bindings_from_reply(i)
        processes: dict[str, int] = {}
        for hostname, stats in stats_reply.items():
            pool = stats.get("pool") if isinstance(stats, dict) else None
            if isinstance(pool, dict):
                procs = pool.get("processes")
                if isinstance(procs, list):
                    processes[str(hostname)] = len(procs)
                elif isinstance(pool.get("max-concurrency"), int):
                    processes[str(hostname)] = int(pool["max-concurrency"])
        self._liveness.update_from_inspect(processes, queues, bindings)
        result = ProbeResult()
        result.values = {h: (n, None) for h, n in processes.items()}
        result.taken_at = self._clock()
        self.result = result

    def maybe_enable_events(self) -> None:
        if not self._config.enable_events:
            return
        now = self._clock()
        if self._last_enable is not None and now - self._last_enable < (
            self._config.enable_events_interval
        ):
            return
        self._last_enable = now
        try:
            self._app.control.enable_events()
            _logger.debug("broadcast enable_events to all workers")
        except Exception as exc:  # noqa: BLE001 - tried again next interval
            _logger.warning("could not broadcast enable_events: %s", exc)


def run_every(
    interval: float, stop: threading.Event, work: Callable[[], None], name: str,
    *, wake: threading.Event | None = None,
) -> None:
    """Call ``work`` now and then every ``interval`` seconds until ``stop``, or sooner when
    ``wake`` is set (whoever sets ``stop`` must set ``wake`` too); never raises."""
    while not stop.is_set():
        if wake is not None:
            wake.clear()  # before the work: a wake-up during it runs the work again
        try:
            work()
        except Exception:
            _logger.exception("%s failed; it runs again in %.0fs", name, interval)
        (wake or stop).wait(interval)
