"""Background probes: queue depth from the broker, workers' queues and pools from inspect.

On Redis (and Redis behind Sentinel) the queue probe also peeks at the oldest message of
each priority list (the tail: kombu pushes on the left and consumers pop on the right;
LINDEX reads without consuming) and takes its time from our publish header (an
instrumented producer), else from the task-sent event of its task id when the exporter
saw one. It also counts, per queue, the messages kombu's Redis transport holds in its
``unacked`` hash for a consumer (delivered to a worker, not yet acknowledged: prefetched,
ETA-parked, and executing under ``acks_late``), see :func:`count_unacked`. RabbitMQ cannot
show a queue's head without delivering it (basic.get), so there is no such age on RabbitMQ.
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
from urllib.parse import unquote, urlsplit

from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER, eta_timestamp
from otel_celery_metrics.core.routing import Binding, bindings_from_reply
from otel_celery_metrics.exporter.broker_tls import broker_use_ssl
from otel_celery_metrics.exporter.config import ExporterConfig, NameFilter
from otel_celery_metrics.exporter.liveness import Liveness
from otel_celery_metrics.exporter.sqs_depth import SqsDepths
from otel_celery_metrics.exporter.transport_options import scheme_of

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
        #: Redis only: queue -> unacknowledged messages a worker holds and has not started
        #: whose ETA is due (or that have none); and those whose ETA is still ahead.
        self.unacked: dict[str, int] = {}
        self.unacked_scheduled: dict[str, int] = {}
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


#: kombu's Redis transport's hash of delivered, unacknowledged messages (``unacked_key``).
UNACKED_KEY = "unacked"


def count_unacked(
    entries: list[Any], queues: set[str], now: float, started: Callable[[str], bool],
) -> tuple[dict[str, int], dict[str, int]]:
    """Per queue, (due, not yet due) counts of the unacked hash's ``entries``.

    An entry is kombu's ``[message, exchange, routing_key]``; Celery's routing key is the
    queue name (entries for other routing keys are not ours to count). An entry whose
    task the exporter saw start is executing (``acks_late``): celery_tasks_executing
    counts it, so it is left out here rather than counted twice. An ETA still ahead goes
    to the second map: it is work, but not work to scale up for yet.
    """
    due: dict[str, int] = {}
    ahead: dict[str, int] = {}
    for raw in entries:
        try:
            message, _exchange, routing_key = json.loads(raw)
            headers = message.get("headers") or {}
        except (ValueError, TypeError, AttributeError):
            continue
        if routing_key not in queues:
            continue
        task_id = headers.get("id")
        if isinstance(task_id, str) and started(task_id):
            continue
        eta = eta_timestamp(headers.get("eta"))
        target = ahead if eta is not None and eta > now else due
        target[routing_key] = target.get(routing_key, 0) + 1
    return due, ahead


class QueueDepthProbe:
    """Messages (and, on RabbitMQ, consumers) per queue; on Redis the oldest one's age.

    ``sent_at`` gives the task-sent time of a task id the exporter saw (or None);
    ``wall_clock`` is seconds since the epoch, what message times are measured in;
    ``started`` tells whether the exporter saw a task id start (and not finish).
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
        started: Callable[[str], bool] = lambda _task_id: False,
    ) -> None:
        self._started = started
        self._config = config
        self._app = app
        self._queues = queues
        self._clock = clock
        self._sent_at = sent_at
        self._wall_clock = wall_clock
        self._filter = NameFilter(config.queue_allow, config.queue_deny)
        self.result = ProbeResult()
        scheme = scheme_of(config.broker_url)
        self._redis = scheme in ("redis", "rediss", "sentinel")
        self._sqs = SqsDepths(config) if scheme == "sqs" else None
        self._client: Any = None

    def queue_names(self) -> list[str]:
        names = set(self._config.queues) | self._queues()
        return sorted(q for q in names if self._filter(q))[: self._config.max_queues]

    def poll(self) -> None:
        names = self.queue_names()
        result = ProbeResult()
        unacked: list[Any] = []
        redis = self._sqs is None and self._redis
        try:
            if self._sqs is not None:
                values = self._sqs_depths(names, result)
            elif redis:
                values = self._redis_depths(names, result.oldest_age, unacked)
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
        if redis:
            result.unacked, result.unacked_scheduled = count_unacked(
                unacked, set(names), self._wall_clock(), self._started)
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
        self, names: list[str], oldest: dict[str, float], unacked: list[Any]
    ) -> dict[str, tuple[int, int | None]]:
        """Depth per queue; fills ``oldest`` with each queue's oldest message age and
        ``unacked`` with the entries of the unacked hash."""
        if self._client is None:
            self._client = redis_client(self._config)
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
        # One call for every queue: the hash holds only what workers hold now, bounded by
        # the fleet's prefetch windows (workers x concurrency x prefetch multiplier).
        pipe.hvals(cfg.redis_key_prefix + UNACKED_KEY)
        replies = pipe.execute()
        unacked.extend(replies.pop())
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


def redis_client(config: ExporterConfig) -> Any:
    """Our own redis-py client for the probes, not kombu's (whose key prefixing would
    apply twice): TLS settings handed over (redis-py's option names, as broker_use_ssl
    gives them for rediss://), and on ``sentinel://`` the primary the sentinels name now,
    asked again after each failed probe (the client is dropped then)."""
    import redis

    timeout = config.probe_timeout
    tls = broker_use_ssl(config) or {}
    if scheme_of(config.broker_url) != "sentinel":
        return redis.Redis.from_url(
            config.broker_url, socket_timeout=timeout, socket_connect_timeout=timeout, **tls,
        )
    from redis.sentinel import Sentinel

    options = config.broker_transport_options
    sentinels = []
    password = username = None
    db = 0
    for url in config.broker_url.split(";"):
        parts = urlsplit(url.strip())
        sentinels.append((parts.hostname or "localhost", parts.port or 26379))
        # As kombu reads a sentinel URL: its password (and db) are the primary's.
        password = unquote(parts.password) if parts.password else password
        username = unquote(parts.username) if parts.username else username
        path = (parts.path or "").strip("/")
        db = int(path) if path.isdigit() else db
    sentinel_kwargs = dict(options.get("sentinel_kwargs") or {})
    sentinel_kwargs.setdefault("socket_timeout", timeout)
    sentinel_kwargs.setdefault("socket_connect_timeout", timeout)
    manager = Sentinel(
        sentinels, min_other_sentinels=int(options.get("min_other_sentinels", 0)),
        sentinel_kwargs=sentinel_kwargs, socket_timeout=timeout,
        socket_connect_timeout=timeout, **tls,
    )
    return manager.master_for(
        str(options["master_name"]), redis_class=redis.Redis, db=db, password=password,
        username=username,
    )


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
