"""The queue probe's oldest-message age (a Redis stand-in answering LLEN/LINDEX, no broker)
and the exporter's utilisation gauge. Real Redis: tests/exporter/integration/test_redis.py."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.probes import ProbeResult, QueueDepthProbe, run_every
from tests.exporter.support import FakeClock, value
from tests.exporter.unit.test_handlers import feed, scrape

NOW = 1_700_000_100.0
SEP = "\x06\x16"


def message(task_id: str, published: float | None = None) -> bytes:
    headers: dict[str, Any] = {"id": task_id, "task": "app.add"}
    if published is not None:
        headers[PUBLISHED_AT_HEADER] = published
    return json.dumps({"body": "", "headers": headers, "properties": {}}).encode()


class FakeRedis:
    """Lists as kombu's Redis transport keeps them: newest on the left, oldest on the right."""

    def __init__(self, lists: dict[str, list[bytes]]) -> None:
        self.lists = lists
        self.calls: list[tuple[str, str, int]] = []

    def pipeline(self, transaction: bool = True) -> FakeRedis:
        return self

    def llen(self, key: str) -> None:
        self.calls.append(("llen", key, 0))

    def lindex(self, key: str, index: int) -> None:
        self.calls.append(("lindex", key, index))

    def hvals(self, key: str) -> None:
        # The unacked hash, kept under its key as a list of its values.
        self.calls.append(("hvals", key, 0))

    def execute(self) -> list[Any]:
        out: list[Any] = []
        for op, key, index in self.calls:
            items = self.lists.get(key, [])
            if op == "hvals":
                out.append(list(items))
            elif op == "llen":
                out.append(len(items))
            else:
                out.append(items[index] if items else None)
        self.calls = []
        return out


def probe(lists: dict[str, list[bytes]], sent: dict[str, float] | None = None,
          started: frozenset[str] = frozenset()) -> QueueDepthProbe:
    config = ExporterConfig(broker_url="redis://127.0.0.1:1/0", queues=("q", "empty", "blind"))
    p = QueueDepthProbe(config, None, set, FakeClock(), sent_at=(sent or {}).get,
                        wall_clock=lambda: NOW, started=started.__contains__)
    p._client = FakeRedis(lists)
    return p


def test_the_oldest_message_over_every_priority_list_gives_the_age() -> None:
    p = probe({
        # Priority 0 list: oldest (rightmost) published 30 s ago, by an instrumented producer.
        "q": [message("new", NOW - 1), message("old", NOW - 30)],
        # A priority list whose oldest only the task-sent event dates: 50 s ago.
        f"q{SEP}3": [message("by-event")],
        # A message whose time nobody knows is the oldest here: no age rather than a wrong one.
        "blind": [message("known", NOW - 5), message("unknown")],
    }, sent={"by-event": NOW - 50})
    p.poll()
    assert p.result.values == {"q": (3, None), "empty": (0, None), "blind": (2, None)}
    assert p.result.oldest_age == {"q": 50.0, "empty": 0.0}


def unacked(task_id: str, routing_key: str, eta: str | None = None) -> bytes:
    """An entry of kombu's unacked hash: [message, exchange, routing key]."""
    headers: dict[str, Any] = {"id": task_id, "task": "app.add", "eta": eta}
    return json.dumps([{"body": "", "headers": headers, "properties": {}}, routing_key,
                       routing_key]).encode()


def test_unacked_messages_count_per_queue_once_due_and_not_executing() -> None:
    p = probe({"unacked": [
        unacked("held-1", "q"), unacked("held-2", "q"),
        # An acks_late task the exporter saw start: celery_tasks_executing counts it.
        unacked("running", "q"),
        # ETA 60 s ahead: not yet work; one due 10 s ago is.
        unacked("later", "q", "2023-11-14T22:16:00+00:00"),
        unacked("due", "blind", "2023-11-14T22:14:50+00:00"),
        # Another routing key (not a probed queue) and a corrupt entry: not ours.
        unacked("other", "elsewhere"), b"not json",
    ]}, started=frozenset({"running"}))
    p.poll()
    assert p.result.unacked == {"q": 2, "blind": 1}
    assert p.result.unacked_scheduled == {"q": 1}


def test_a_producer_clock_ahead_reads_zero_not_a_negative_age() -> None:
    p = probe({"q": [message("future", NOW + 3)]})
    p.poll()
    assert p.result.oldest_age["q"] == 0.0


def test_the_scrape_grows_the_age_since_the_probe_and_keeps_empty_queues_at_zero(
    make_exporter, clock: FakeClock
) -> None:
    exporter = make_exporter()
    result = ProbeResult()
    result.values = {"q": (2, None), "idle": (0, None)}
    result.oldest_age = {"q": 12.0, "idle": 0.0}
    result.taken_at = clock()
    exporter.queue_probe.result = result
    clock.advance(3)
    text = scrape(exporter)
    assert value(text, "celery_queue_oldest_message_age_seconds", queue="q") == 15.0
    assert value(text, "celery_queue_oldest_message_age_seconds", queue="idle") == 0.0


def test_the_exporters_probe_dates_a_message_by_its_task_sent_event(make_exporter) -> None:
    exporter = make_exporter(queues=("q",))
    feed(exporter, [{"type": "task-sent", "uuid": "t1", "name": "app.add", "queue": "q",
                     "hostname": "web-1", "timestamp": 1_700_000_000.0}])
    exporter.queue_probe._client = FakeRedis({"q": [message("t1")]})
    exporter.queue_probe._wall_clock = lambda: 1_700_000_042.0
    exporter.queue_probe.poll()
    assert exporter.queue_probe.result.oldest_age == {"q": 42.0}


def test_utilisation_is_active_over_pool_processes_once_both_are_known(make_exporter) -> None:
    exporter = make_exporter()
    exporter.liveness.heartbeat("celery@a", active=3, processed=10)
    exporter.liveness.heartbeat("celery@b", active=1, processed=10)
    assert value(scrape(exporter), "celery_worker_utilisation", hostname="celery@a") is None
    exporter.liveness.update_from_inspect({"celery@a": 4, "celery@b": 1}, {})
    text = scrape(exporter)
    assert value(text, "celery_worker_utilisation", hostname="celery@a") == 0.75
    assert value(text, "celery_worker_utilisation", hostname="celery@b") == 1.0


def test_a_probe_loop_runs_again_at_once_when_woken_and_ends_when_stopped() -> None:
    stop, wake = threading.Event(), threading.Event()
    runs: list[float] = []
    loop = threading.Thread(target=run_every, args=(3600.0, stop, lambda: runs.append(1), "t"),
                            kwargs={"wake": wake}, daemon=True)
    loop.start()
    deadline = time.monotonic() + 10
    while len(runs) < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    wake.set()  # an hour-long interval: only the wake-up can run it again
    while len(runs) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runs) == 2
    stop.set()
    wake.set()
    loop.join(10)
    assert not loop.is_alive()
    assert len(runs) == 2
