"""Event handlers fed with event dicts, no broker: exact counts and hostile input."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest

from otel_celery_metrics.exporter.service import Exporter
from tests.exporter.support import FakeClock, promtool_check, samples, total, value

W = "celery@host-a"


def scrape(exporter: Exporter) -> str:
    with exporter.instruments.collect_lock:
        return generate_latest(exporter.registry).decode()


def lifecycle(
    task_id: str,
    name: str = "app.add",
    queue: str = "default",
    outcome: str = "succeeded",
    t0: float = 1_700_000_000.0,
    **extra: Any,
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {
            "type": "task-sent",
            "uuid": task_id,
            "name": name,
            "queue": queue,
            "hostname": "web-1",
            "timestamp": t0,
        },
        {
            "type": "task-received",
            "uuid": task_id,
            "name": name,
            "hostname": W,
            "timestamp": t0 + 1.0,
        },
        {"type": "task-started", "uuid": task_id, "hostname": W, "timestamp": t0 + 2.0},
    ]
    if outcome == "succeeded":
        events.append(
            {
                "type": "task-succeeded",
                "uuid": task_id,
                "hostname": W,
                "runtime": 0.25,
                "timestamp": t0 + 2.25,
            }
        )
    elif outcome == "failed":
        events.append(
            {
                "type": "task-failed",
                "uuid": task_id,
                "hostname": W,
                "exception": "KeyError('secret')",
                "timestamp": t0 + 3.0,
                **extra,
            }
        )
    return events


def feed(exporter: Exporter, events: list[dict[str, Any]]) -> None:
    for event in events:
        exporter.handlers.handle(event)


def test_counts_every_event_once_under_seed_and_unified_names(make_exporter) -> None:
    exporter = make_exporter()
    for i in range(3):
        feed(exporter, lifecycle(f"ok-{i}"))
    feed(exporter, lifecycle("bad", outcome="failed"))
    text = scrape(exporter)
    labels = {"task_name": "app.add", "queue": "default"}
    assert value(text, "celery_task_sent_total", **labels) == 4
    assert value(text, "celery_task_received_total", **labels) == 4
    assert value(text, "celery_task_started_total", **labels) == 4
    assert value(text, "celery_task_succeeded_total", **labels) == 3
    assert value(text, "celery_task_failed_total", **labels) == 1
    assert value(text, "celery_tasks_total", state="SUCCESS", **labels) == 3
    assert value(text, "celery_tasks_total", state="FAILURE", **labels) == 1
    assert value(text, "celery_task_failures_total", exception_type="KeyError", **labels) == 1
    assert value(text, "celery_tasks_published_total", **labels) == 4
    # Runtime: 3 x 0.25 s from task-succeeded, plus the failure's start -> failed (1 s).
    # The state separates the failed run's runtime from the successful ones'.
    ok, failed = {"state": "SUCCESS", **labels}, {"state": "FAILURE", **labels}
    assert value(text, "celery_task_runtime_seconds_count", **ok) == 3
    assert value(text, "celery_task_runtime_seconds_sum", **ok) == pytest.approx(0.75)
    assert value(text, "celery_task_runtime_seconds_count", **failed) == 1
    assert value(text, "celery_task_runtime_seconds_sum", **failed) == pytest.approx(1.0)
    assert value(text, "celery_task_queue_wait_seconds_count", wait_from="publish", **labels) == 4
    assert value(
        text, "celery_task_queue_wait_seconds_sum", wait_from="publish", **labels
    ) == pytest.approx(8.0)
    assert value(text, "celery_tasks_executing", **labels) == 0
    assert "secret" not in text
    promtool_check(text)


def test_queue_wait_counts_from_eta_when_it_is_later_than_publish(make_exporter) -> None:
    exporter = make_exporter()
    events = lifecycle("eta-1")
    events[0]["eta"] = "2023-11-14T22:13:21+00:00"  # t0 + 1 s
    feed(exporter, events)
    text = scrape(exporter)
    assert value(text, "celery_task_queue_wait_seconds_sum", wait_from="eta") == pytest.approx(1.0)


def test_retry_revoke_reject_and_executing(make_exporter) -> None:
    exporter = make_exporter()
    feed(exporter, lifecycle("r", outcome="none"))
    assert value(scrape(exporter), "celery_tasks_executing", task_name="app.add") == 1
    feed(exporter, [{"type": "task-retried", "uuid": "r", "hostname": W, "exception": "Retry()"}])
    feed(exporter, lifecycle("v", outcome="none"))
    feed(exporter, [{"type": "task-revoked", "uuid": "v", "terminated": True}])
    feed(exporter, lifecycle("j", outcome="none"))
    feed(exporter, [{"type": "task-rejected", "uuid": "j", "hostname": W, "requeue": False}])
    text = scrape(exporter)
    assert value(text, "celery_task_retried_total", task_name="app.add") == 1
    assert value(text, "celery_task_revoked_total", task_name="app.add") == 1
    assert value(text, "celery_task_rejected_total", task_name="app.add") == 1
    for state in ("RETRY", "REVOKED", "REJECTED"):
        assert value(text, "celery_tasks_total", task_name="app.add", state=state) == 1
    assert value(text, "celery_tasks_executing", task_name="app.add") == 0


def test_events_of_a_task_arriving_after_it_finished_keep_its_name(make_exporter) -> None:
    exporter = make_exporter()
    feed(exporter, lifecycle("x"))
    feed(exporter, [{"type": "task-retried", "uuid": "x", "hostname": W}])
    assert value(scrape(exporter), "celery_task_retried_total", task_name="app.add") == 1


HOSTILE: list[tuple[object, str, str]] = [
    ("not a dict", "other", "invalid_field"),
    ({"no": "type"}, "other", "unknown_type"),
    ({"type": 'made-up\n{evil="1"}'}, "other", "unknown_type"),
    ({"type": ["task-sent"]}, "other", "unknown_type"),
    ({"type": "task-sent", "name": "t"}, "task-sent", "invalid_field"),  # no uuid
    ({"type": "task-sent", "uuid": 5, "name": "t"}, "task-sent", "invalid_field"),
    ({"type": "task-sent", "uuid": "a", "name": None}, "task-sent", "invalid_field"),
    ({"type": "task-sent", "uuid": "a", "name": "x" * 100_000}, "task-sent", "invalid_field"),
    ({"type": "task-sent", "uuid": "a", "name": "two\nlines"}, "task-sent", "invalid_field"),
    ({"type": "task-sent", "uuid": "a", "name": "bad\udcffutf8"}, "task-sent", "invalid_field"),
    ({"type": "task-sent", "uuid": "a", "name": "\x00"}, "task-sent", "invalid_field"),
    ({"type": "task-sent", "uuid": "a", "name": "t", "queue": ["q"]}, "task-sent", "invalid_field"),
    (
        {"type": "task-received", "uuid": "d", "name": "t", "hostname": 42},
        "task-received",
        "invalid_field",
    ),
    ({"type": "worker-heartbeat"}, "worker-heartbeat", "invalid_field"),
    ({"type": "worker-offline", "hostname": {"a": 1}}, "worker-offline", "invalid_field"),
]


@pytest.mark.parametrize(("event", "kind", "reason"), HOSTILE)
def test_a_malformed_event_is_dropped_and_counted_never_raised(
    make_exporter, event: object, kind: str, reason: str
) -> None:
    exporter = make_exporter()
    exporter.handlers.handle(event)
    text = scrape(exporter)
    assert value(text, "celery_exporter_events_dropped_total", type=kind, reason=reason) == 1
    assert total(text, "celery_task_sent_total") == 0
    promtool_check(text)


# A number that is not one (or from a clock that is wrong) costs the measurement it feeds,
# never the event: (field overrides per event type, the refusal's reason).
BAD_NUMBERS: list[tuple[dict[str, dict[str, Any]], str]] = [
    ({"task-started": {"timestamp": "soon"}}, "invalid_time"),
    ({"task-started": {"timestamp": float("nan")}}, "invalid_time"),
    ({"task-sent": {"timestamp": float("-inf")}}, "invalid_time"),
    ({"task-sent": {"timestamp": -1e300}}, "implausible_time"),
    ({"task-sent": {"timestamp": True}}, "invalid_time"),
    ({"task-sent": {"timestamp": [1]}}, "invalid_time"),
    ({"task-sent": {"timestamp": 1_700_000_000.0 + 3600}}, "implausible_time"),  # 1 h ahead
    ({"task-sent": {"eta": "tomorrow"}}, "invalid_time"),
    ({"task-succeeded": {"runtime": True}}, "invalid_time"),
    ({"task-succeeded": {"runtime": float("inf")}}, "invalid_time"),
    ({"task-succeeded": {"runtime": -0.5}}, "implausible_time"),
    ({"task-succeeded": {"runtime": 30 * 86_400.0}}, "implausible_time"),
]


@pytest.mark.parametrize(("overrides", "reason"), BAD_NUMBERS)
def test_a_bad_number_is_refused_and_counted_while_the_task_still_counts(
    make_exporter, caplog: pytest.LogCaptureFixture, overrides: dict[str, dict[str, Any]],
    reason: str,
) -> None:
    exporter = make_exporter()
    events = lifecycle("t-1")
    for event in events:
        event.update(overrides.get(event["type"], {}))
    feed(exporter, events)
    text = scrape(exporter)
    labels = {"task_name": "app.add", "queue": "default"}
    assert value(text, "celery_tasks_total", state="SUCCESS", **labels) == 1
    assert value(text, "celery_exporter_measurements_dropped_total", reason=reason) == 1
    assert total(text, "celery_exporter_measurements_dropped_total") == 1
    assert total(text, "celery_exporter_events_dropped_total") == 0
    assert all(math.isfinite(v) for _, _, v in samples(text))
    refused = [r.getMessage() for r in caplog.records if "was not recorded" in r.getMessage()]
    assert len(refused) == 1
    assert "app.add" in refused[0]
    assert f'measurements_dropped_total{{reason="{reason}"}}' in refused[0]
    promtool_check(text)


def test_a_worker_whose_clock_is_behind_keeps_its_runtimes_and_waits_from_receipt(
    make_exporter,
) -> None:
    # The producer's clock is right, the worker's 6 min behind (beyond the 5 min
    # tolerance): the task starts "before" it was published, so that wait is refused;
    # runtimes, from the worker's clock alone, stay right.
    exporter = make_exporter()
    events = lifecycle("slow-clock", outcome="failed")
    for event in events[1:]:
        event["timestamp"] -= 360.0
    feed(exporter, events)
    text = scrape(exporter)
    failed = {"task_name": "app.add", "queue": "default", "state": "FAILURE"}
    assert value(text, "celery_task_runtime_seconds_sum", **failed) == pytest.approx(1.0)
    assert value(text, "celery_exporter_measurements_dropped_total",
                 reason="implausible_time") == 1
    assert total(text, "celery_task_queue_wait_seconds_count") == 0


def test_a_heartbeat_with_a_bad_count_keeps_the_worker_up(make_exporter) -> None:
    exporter = make_exporter()
    feed(exporter, [{"type": "worker-heartbeat", "hostname": W, "active": "many",
                     "processed": float("nan")}])
    text = scrape(exporter)
    assert value(text, "celery_worker_up", hostname=W) == 1
    assert value(text, "celery_exporter_measurements_dropped_total", reason="invalid_number") == 2
    assert total(text, "celery_exporter_events_dropped_total") == 0


def test_quotes_and_backslashes_in_names_are_escaped_in_a_valid_exposition(make_exporter) -> None:
    exporter = make_exporter()
    name = 'tasks.say "hi" \\ {there}'
    feed(exporter, lifecycle("q", name=name, queue='q"1'))
    text = scrape(exporter)
    promtool_check(text)
    assert 'task_name="tasks.say \\"hi\\" \\\\ {there}"' in text


def test_a_flood_of_task_names_is_capped_with_overflow(make_exporter) -> None:
    exporter = make_exporter(max_task_names=3)
    for i in range(10):
        feed(exporter, lifecycle(f"id-{i}", name=f"task.{i}"))
    text = scrape(exporter)
    names = {
        ls["task_name"]
        for n, ls, _ in __import__("tests.exporter.support", fromlist=["samples"]).samples(text)
        if n == "celery_task_succeeded_total"
    }
    assert names == {"task.0", "task.1", "task.2", "__overflow__"}
    assert value(text, "celery_task_succeeded_total", task_name="__overflow__") == 7
    assert value(text, "otel_celery_metrics_overflow_total", attribute="task_name") > 0  # type: ignore[operator]


def test_allow_and_deny_lists_filter_tasks_and_queues(make_exporter) -> None:
    exporter = make_exporter(
        task_allow=("app.*",), task_deny=("app.secret*",), queue_deny=("internal",)
    )
    feed(exporter, lifecycle("1", name="app.add"))
    feed(exporter, lifecycle("2", name="app.secret_job"))
    feed(exporter, lifecycle("3", name="other.task"))
    feed(exporter, lifecycle("4", name="app.add", queue="internal"))
    text = scrape(exporter)
    assert total(text, "celery_task_succeeded_total") == 1
    assert value(text, "celery_task_succeeded_total", task_name="app.add", queue="default") == 1
    assert (
        value(
            text, "celery_exporter_events_dropped_total", type="task-succeeded", reason="filtered"
        )
        == 3
    )


def test_hostname_label_on_task_series_is_opt_in(make_exporter) -> None:
    plain = scrape_after(make_exporter(), lifecycle("a"))
    assert value(plain, "celery_task_succeeded_total", task_name="app.add") == 1
    assert 'hostname="' not in plain.split("celery_task_succeeded_total{", 1)[1].split("\n")[0]
    labelled = scrape_after(make_exporter(task_hostname_label=True), lifecycle("a"))
    assert value(labelled, "celery_task_succeeded_total", hostname=W) == 1


def scrape_after(exporter: Exporter, events: list[dict[str, Any]]) -> str:
    feed(exporter, events)
    return scrape(exporter)


def test_danihodovic_names_switch(make_exporter, clock: FakeClock) -> None:
    exporter = make_exporter(danihodovic_names=True)
    feed(exporter, [{"type": "worker-online", "hostname": W, "active": 0, "processed": 0}])
    feed(exporter, lifecycle("a"))
    feed(exporter, lifecycle("b", outcome="failed"))
    text = scrape(exporter)
    dh = {"name": "app.add", "queue_name": "default", "hostname": W}
    assert value(text, "celery_task_succeeded_total", **dh) == 1
    assert value(text, "celery_task_failed_total", exception="KeyError", **dh) == 1
    assert value(text, "celery_task_runtime_count", **dh) == 2
    assert value(text, "celery_worker_up", hostname=W) == 1
    assert value(text, "celery_task_succeeded_total", task_name="app.add") is None
    # The unified series stay, so a dashboard built on them keeps working too.
    assert value(text, "celery_tasks_total", task_name="app.add", state="SUCCESS") == 1
    promtool_check(text)


def test_a_task_sent_event_arriving_after_task_started_still_counts_from_publish(
    make_exporter, clock: FakeClock
) -> None:
    """The producer publishes task-sent after the message, on its own connection: on a busy
    bus the worker's task-started (even task-succeeded) often arrives first."""
    exporter = make_exporter()
    feed(exporter, lifecycle("first"))
    sent, received, started, succeeded = lifecycle("late", t0=1_700_000_100.0)
    feed(exporter, [received, started, succeeded])
    labels = {"task_name": "app.add", "queue": "default"}
    text = scrape(exporter)
    assert value(text, "celery_task_queue_wait_seconds_count", wait_from="publish", **labels) == 1
    assert value(text, "celery_task_queue_wait_seconds_count", wait_from="received",
                 **labels) is None
    clock.advance(0.5)
    feed(exporter, [sent])
    text = scrape(exporter)
    assert value(text, "celery_task_queue_wait_seconds_count", wait_from="publish", **labels) == 2
    assert value(
        text, "celery_task_queue_wait_seconds_sum", wait_from="publish", **labels
    ) == pytest.approx(4.0)
    assert value(text, "celery_task_sent_total", **labels) == 2
    # Nothing is left to settle later: a heartbeat past the grace changes nothing.
    clock.advance(10)
    feed(exporter, [{"type": "worker-heartbeat", "hostname": W, "timestamp": 1.0}])
    assert value(scrape(exporter), "celery_task_queue_wait_seconds_count",
                 wait_from="publish", **labels) == 2


def test_a_task_sent_event_that_never_comes_settles_for_the_receipt_time(
    make_exporter, clock: FakeClock
) -> None:
    """Also Celery's default: producers send no task-sent events (task_send_sent_event)."""
    exporter = make_exporter()
    _sent, received, started, _done = lifecycle("lost-sent", t0=1_700_000_100.0)
    feed(exporter, [received, started])
    # No task-sent: the queue is the worker's default one (the event carries none).
    labels = {"task_name": "app.add", "wait_from": "received"}
    heartbeat = {"type": "worker-heartbeat", "hostname": W, "timestamp": 1.0}
    clock.advance(1.0)
    feed(exporter, [heartbeat])
    assert value(scrape(exporter), "celery_task_queue_wait_seconds_count", **labels) is None
    clock.advance(1.5)  # past the grace: the next event settles it
    feed(exporter, [heartbeat])
    text = scrape(exporter)
    assert value(text, "celery_task_queue_wait_seconds_count", **labels) == 1
    assert value(text, "celery_task_queue_wait_seconds_sum", **labels) == pytest.approx(1.0)


def _sent(task_id: str, queue: str, exchange: str, routing_key: str) -> dict[str, Any]:
    return {"type": "task-sent", "uuid": task_id, "name": "app.img", "queue": queue,
            "exchange": exchange, "routing_key": routing_key, "hostname": "web-1",
            "timestamp": 1_700_000_000.0}


def test_task_sent_labels_the_destination_queue_never_the_routing_key(make_exporter) -> None:
    from otel_celery_metrics.core.routing import Binding

    exporter = make_exporter()
    exporter.liveness.update_from_inspect({}, {}, {
        "images": (Binding("media", "topic", "images.#"),),
        "celery": (Binding("celery", "direct", "celery"),),
    })
    # Celery's routing: the resolved queue (a topic route, the anonymous exchange).
    exporter.handlers.handle(_sent("a", "images", "media", "images.resize.user0"))
    exporter.handlers.handle(_sent("b", "celery", "", "celery"))
    # exchange= + routing_key= past the resolved default queue: the one queue they reach.
    exporter.handlers.handle(_sent("c", "celery", "media", "images.crop.user1"))
    # A key no known binding takes: the default queue, not the key.
    exporter.handlers.handle(_sent("d", "celery", "media", "videos.user2"))
    text = scrape(exporter)
    sent = {ls["queue"]: v for n, ls, v in samples(text) if n == "celery_task_sent_total"}
    assert sent == {"images": 2, "celery": 1, "unknown": 1}


def test_a_worker_with_one_queue_labels_what_it_received_with_it(make_exporter) -> None:
    exporter = make_exporter()
    exporter.handlers.handle({"type": "worker-online", "hostname": W, "timestamp": 1.0})
    exporter.liveness.update_from_inspect({}, {W: ("images",)})
    events = lifecycle("t1", queue="celery")  # task-sent said its resolved queue
    feed(exporter, events)
    text = scrape(exporter)
    assert value(text, "celery_task_received_total", task_name="app.add", queue="images") == 1
    assert value(text, "celery_task_succeeded_total", task_name="app.add", queue="images") == 1


def test_events_of_a_worker_with_several_queues_wait_for_their_late_task_sent(
    make_exporter, clock: FakeClock
) -> None:
    exporter = make_exporter()
    exporter.handlers.handle({"type": "worker-online", "hostname": W, "timestamp": 1.0})
    exporter.liveness.update_from_inspect({}, {W: ("images", "feeds")})
    sent, *worker_events = lifecycle("t1", queue="images")
    feed(exporter, worker_events)  # the worker's events come first, as on a busy bus
    assert total(scrape(exporter), "celery_task_received_total") == 0  # held
    feed(exporter, [sent])
    text = scrape(exporter)
    for metric in ("celery_task_received_total", "celery_task_started_total",
                   "celery_task_succeeded_total"):
        assert value(text, metric, task_name="app.add", queue="images") == 1, metric
    assert total(text, "celery_task_received_total", queue="unknown") == 0

    # A task-sent that never comes: once the grace ran out, the default queue.
    _, *worker_events = lifecycle("t2", queue="images")
    feed(exporter, worker_events)
    clock.advance(2.5)
    exporter.handlers.handle({"type": "worker-heartbeat", "hostname": W, "timestamp": 5.0})
    text = scrape(exporter)
    assert value(text, "celery_task_succeeded_total", task_name="app.add", queue="unknown") == 1
    assert value(text, "celery_task_succeeded_total", task_name="app.add", queue="images") == 1


def test_queue_wait_counts_from_eta_when_it_is_later_than_receipt_and_no_task_sent_came(
    make_exporter, clock: FakeClock
) -> None:
    """The rule both ways in share (core/queue_wait.py, tests/unit/test_queue_wait.py)."""
    exporter = make_exporter()
    _sent, received, started, _done = lifecycle("eta-rcv", t0=1_700_000_100.0)
    received["eta"] = "2023-11-14T22:15:01.500000+00:00"  # receipt (t0 + 1 s) + 0.5 s
    feed(exporter, [received, started])
    heartbeat = {"type": "worker-heartbeat", "hostname": W, "timestamp": 1.0}
    clock.advance(2.5)  # past the grace for a late task-sent: the next event settles it
    feed(exporter, [heartbeat])
    text = scrape(exporter)
    assert value(text, "celery_task_queue_wait_seconds_count", wait_from="received") is None
    assert value(text, "celery_task_queue_wait_seconds_sum", wait_from="eta") == pytest.approx(0.5)
