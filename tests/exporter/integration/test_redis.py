"""The exporter against real Redis and real ``celery worker -E`` processes."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tests.exporter.integration.conftest import REDIS_URL, producer
from tests.exporter.support import promtool_check, total, value, wait_for

pytestmark = pytest.mark.integration


def test_exact_task_counts_from_a_real_worker(
    redis_url, queue, start_exporter, start_worker
) -> None:
    exporter = start_exporter(redis_url)
    worker = start_worker(redis_url, queue)
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        30,
        "the worker's first heartbeat",
    )
    # task-sent is published after the task message, so a fast worker's events may come
    # first; their queue is then the worker's only queue, known once inspect answered.
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_workers", queue=queue) == 1,
        20,
        "the worker's queues from inspect",
    )
    app = producer(redis_url)
    for i in range(5):
        app.send_task("exp.ok", args=[i], queue=queue)
    for _ in range(2):
        app.send_task("exp.fail", queue=queue)
    app.send_task("exp.retry", queue=queue)

    def settled() -> str | None:
        # A scrape reads the histograms before the counters (two collectors, registry
        # order): events handled in between show in the counters only, until the next
        # scrape. And a task-sent event may arrive after its task ended (the producer
        # publishes it on its own connection); its publish-based wait is recorded then.
        # So wait for the histograms too.
        text = exporter.scrape()
        ok = {"task_name": "exp.ok", "queue": queue}
        done = (
            total(text, "celery_task_succeeded_total", queue=queue) == 6
            and total(text, "celery_task_failed_total", queue=queue) == 2
            and total(text, "celery_task_retried_total", queue=queue) == 1
            and value(text, "celery_task_runtime_seconds_count", **ok) == 5
            and value(text, "celery_task_queue_wait_seconds_count", wait_from="publish",
                      **ok) == 5
        )
        return text if done else None

    text = wait_for(settled, 45, "all task events")
    q = {"queue": queue}
    assert value(text, "celery_task_sent_total", task_name="exp.ok", **q) == 5
    assert value(text, "celery_task_received_total", task_name="exp.ok", **q) == 5
    assert value(text, "celery_task_started_total", task_name="exp.ok", **q) == 5
    assert value(text, "celery_task_succeeded_total", task_name="exp.ok", **q) == 5
    assert value(text, "celery_task_failed_total", task_name="exp.fail", **q) == 2
    assert value(text, "celery_task_sent_total", task_name="exp.retry", **q) == 2
    assert value(text, "celery_task_started_total", task_name="exp.retry", **q) == 2
    assert value(text, "celery_task_retried_total", task_name="exp.retry", **q) == 1
    assert value(text, "celery_task_succeeded_total", task_name="exp.retry", **q) == 1
    assert value(text, "celery_tasks_total", task_name="exp.ok", state="SUCCESS", **q) == 5
    assert value(text, "celery_tasks_total", task_name="exp.fail", state="FAILURE", **q) == 2
    assert value(text, "celery_tasks_total", task_name="exp.retry", state="RETRY", **q) == 1
    assert (
        value(
            text, "celery_task_failures_total", task_name="exp.fail", exception_type="KeyError", **q
        )
        == 2
    )
    assert value(text, "celery_task_runtime_seconds_count", task_name="exp.ok", **q) == 5
    assert (
        value(
            text,
            "celery_task_queue_wait_seconds_count",
            task_name="exp.ok",
            wait_from="publish",
            **q,
        )
        == 5
    )
    assert value(text, "celery_tasks_executing", task_name="exp.ok", **q) == 0
    assert "secret message" not in text
    # Queues and pools come from the background inspect probe.
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_processes", hostname=worker.node) == 2,
        20,
        "inspect stats",
    )
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_workers", queue=queue) == 1,
        20,
        "active_queues",
    )
    # Discovered from the workers, then probed for depth on the next poll.
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_messages", queue=queue) == 0,
        20,
        "the discovered queue's depth",
    )
    text = exporter.scrape()
    assert value(text, "celery_queue_processes", queue=queue) == 2
    assert value(text, "celery_exporter_broker_connected") == 1
    assert exporter.get("/health")[0] == 200
    promtool_check(text)


def test_queue_length_counts_every_priority_list(redis_url, queue, start_exporter) -> None:
    exporter = start_exporter(redis_url, f"--queues={queue}")
    app = producer(redis_url)
    for priority in range(10):
        app.send_task("exp.ok", queue=queue, priority=priority)
    app.send_task("exp.ok", queue=queue)
    client = redis.Redis.from_url(redis_url)
    assert client.llen(queue) < 11, "the messages really are spread over priority lists"
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_messages", queue=queue) == 11,
        20,
        "queue depth 11",
    )
    client.delete(queue, *(f"{queue}\x06\x16{p}" for p in (3, 6, 9)))


def test_queue_length_with_the_apps_own_separator_and_steps(
    redis_url, queue, start_exporter
) -> None:
    steps = list(range(10))
    exporter = start_exporter(
        redis_url,
        f"--queues={queue}",
        "--priority-separator=:",
        "--priority-steps=" + ",".join(map(str, steps)),
    )
    app = producer(redis_url, broker_transport_options={"priority_steps": steps, "sep": ":"})
    for priority in steps:
        app.send_task("exp.ok", queue=queue, priority=priority)
    client = redis.Redis.from_url(redis_url)
    assert client.llen(f"{queue}:9") == 1
    wait_for(
        lambda: value(exporter.scrape(), "celery_queue_messages", queue=queue) == 10,
        20,
        "queue depth 10",
    )
    client.delete(queue, *(f"{queue}:{p}" for p in steps))


@pytest.mark.parametrize("receiver", ["redis", "kombu"])
def test_a_global_keyprefix_is_applied_to_events_and_queues(
    redis_url, queue, start_exporter, start_worker, receiver
) -> None:
    """kombu prefixes every key *and* pub/sub channel with global_keyprefix: events,
    broadcasts (inspect) and queue lists all move; ``--redis-key-prefix`` follows them,
    with our pub/sub reader and with kombu's."""
    prefix = f"pfx-{queue}:"
    idle = f"{queue}-idle"
    exporter = start_exporter(
        redis_url, f"--redis-key-prefix={prefix}", f"--queues={idle}", f"--receiver={receiver}"
    )
    worker = start_worker(redis_url, queue, "wp", env={"EXPORTER_TEST_KEYPREFIX": prefix})
    wait_for(  # heartbeats arrive on the prefixed event channel
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        30,
        "the worker's first heartbeat through the prefixed channel",
    )
    wait_for(  # inspect broadcasts and replies go through prefixed channels too
        lambda: value(exporter.scrape(), "celery_queue_workers", queue=queue) == 1,
        20,
        "the worker's queues from inspect",
    )
    app = producer(redis_url, broker_transport_options={"global_keyprefix": prefix})
    for i in range(3):
        app.send_task("exp.ok", args=[i], queue=queue)
    for _ in range(2):
        app.send_task("exp.ok", queue=idle)  # nobody consumes it: its depth stays 2
    client = redis.Redis.from_url(redis_url)
    assert client.llen(prefix + idle) == 2 and client.llen(idle) == 0
    text = wait_for(
        lambda: (t := exporter.scrape())
        and value(t, "celery_task_succeeded_total", task_name="exp.ok", queue=queue) == 3
        and value(t, "celery_queue_messages", queue=idle) == 2
        and t,
        30,
        "task events and the prefixed queue's depth",
    )
    assert value(text, "celery_tasks_total", task_name="exp.ok", state="SUCCESS", queue=queue) == 3
    client.delete(prefix + idle)


def test_killed_worker_goes_to_zero_and_two_nodes_on_one_host_stay_two(
    redis_url, queue, start_exporter, start_worker
) -> None:
    exporter = start_exporter(redis_url, "--worker-forget-after=10")
    one = start_worker(redis_url, queue, "w1")
    two = start_worker(redis_url, queue, "w2", concurrency=1)
    assert one.node.split("@")[1] == two.node.split("@")[1]

    def both_up() -> bool:
        text = exporter.scrape()
        return (
            value(text, "celery_worker_up", hostname=one.node) == 1
            and value(text, "celery_worker_up", hostname=two.node) == 1
        )

    wait_for(both_up, 30, "two workers up")
    one.kill()
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=one.node) == 0,
        20,
        "the killed worker to read 0",
    )
    text = exporter.scrape()
    assert value(text, "celery_worker_up", hostname=two.node) == 1
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=one.node) is None,
        30,
        "the killed worker to be forgotten",
    )


def test_broker_restart_mid_stream(private_redis, queue, start_exporter, start_worker) -> None:
    url = private_redis.url
    exporter = start_exporter(url)
    worker = start_worker(url, queue)
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        30,
        "worker up",
    )
    app = producer(url)
    for i in range(3):
        app.send_task("exp.ok", args=[i], queue=queue)
    wait_for(
        lambda: (
            value(exporter.scrape(), "celery_task_succeeded_total", task_name="exp.ok", queue=queue)
            == 3
        ),
        30,
        "3 tasks",
    )

    private_redis.stop()
    wait_for(lambda: exporter.get("/health")[0] == 503, 20, "health to fail")
    _, body = exporter.get("/health")
    assert "unreachable" in body and private_redis.password not in body
    assert value(exporter.scrape(), "celery_exporter_broker_connected") == 0
    assert exporter.alive(), "a broker outage never ends the exporter"

    private_redis.start()
    wait_for(lambda: exporter.get("/health")[0] == 200, 30, "health to recover")
    text = exporter.scrape()
    assert value(text, "celery_exporter_broker_reconnects_total") >= 1  # type: ignore[operator]
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        30,
        "the worker's heartbeats again",
    )
    app = producer(url)
    for i in range(3):
        app.send_task("exp.ok", args=[i], queue=queue)
    wait_for(
        lambda: (
            value(exporter.scrape(), "celery_task_succeeded_total", task_name="exp.ok", queue=queue)
            == 6
        ),
        30,
        "6 tasks",
    )
    log = exporter.log
    assert "redis://:***@127.0.0.1" in log
    assert private_redis.password not in log
    assert "retrying in" in log and "reconnected to the broker" in log


def test_events_disabled_is_detected_and_logged(
    redis_url, queue, start_exporter, start_worker
) -> None:
    exporter = start_exporter(redis_url, "--events-missing-after=3")
    worker = start_worker(redis_url, queue, events=False)
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        30,
        "heartbeats (sent even without -E)",
    )
    app = producer(redis_url, sent_events=False)
    for i in range(5):
        app.send_task("exp.ok", args=[i], queue=queue)
    wait_for(
        lambda: value(exporter.scrape(), "celery_exporter_workers_without_task_events") == 1,
        30,
        "events-disabled detection",
    )
    assert total(exporter.scrape(), "celery_task_succeeded_total", queue=queue) == 0
    wait_for(
        lambda: (
            f"worker {worker.node} is processing tasks but sends no task events" in exporter.log
        ),
        10,
        "the log line",
    )


def test_enable_events_turns_task_events_on(redis_url, queue, start_exporter, start_worker) -> None:
    exporter = start_exporter(redis_url, "--enable-events", "--enable-events-interval=1")
    worker = start_worker(redis_url, queue, events=False)
    wait_for(
        lambda: value(exporter.scrape(), "celery_worker_up", hostname=worker.node) == 1,
        30,
        "worker up",
    )
    app = producer(redis_url, sent_events=False)

    def counted() -> bool:
        app.send_task("exp.ok", queue=queue)
        return total(exporter.scrape(), "celery_task_succeeded_total") > 0

    wait_for(counted, 30, "task events after enable_events", every=1.0)


def test_hostile_payloads_on_the_bus_are_dropped_and_the_exposition_stays_valid(
    redis_url, start_exporter
) -> None:
    import base64

    exporter = start_exporter(redis_url)
    client = redis.Redis.from_url(redis_url)
    channel = "/12.celeryev/task.sent"
    assert REDIS_URL.endswith("/12")

    def wrap(raw: bytes) -> bytes:
        return json.dumps(
            {
                "body": base64.b64encode(raw).decode(),
                "content-type": "application/json",
                "properties": {"body_encoding": "base64"},
            }
        ).encode()

    hostile = [
        b"\xff\xfe garbage",
        wrap(b"\xff\xfe not utf-8 json"),
        wrap(json.dumps({"type": "task-sent", "uuid": "1", "name": "a\nb"}).encode()),
        wrap(json.dumps({"type": "task-sent", "uuid": "2", "name": "x" * 70_000}).encode()),
        wrap(json.dumps({"type": "task-sent", "uuid": 3, "name": "t"}).encode()),
        wrap(b'{"type": "task-sent", "uuid": "4", "name": "\\udcff"}'),
        wrap(json.dumps({"type": 'evil"type', "uuid": "5"}).encode()),
    ]
    good = wrap(
        json.dumps(
            {
                "type": "task-sent",
                "uuid": "6",
                "name": 'ok "quoted"',
                "queue": "hostile-test",
                "hostname": "h",
            }
        ).encode()
    )
    wait_for(lambda: exporter.get("/health")[0] == 200, 20, "the exporter to subscribe")
    for payload in [*hostile, good]:
        client.publish(channel, payload)

    def good_one_counted() -> str | None:
        text = exporter.scrape()
        return text if total(text, "celery_task_sent_total", queue="hostile-test") == 1 else None

    text = wait_for(good_one_counted, 20, "the good event")
    dropped = total(text, "celery_exporter_events_dropped_total")
    assert dropped == len(hostile)
    assert exporter.alive() and exporter.get("/health")[0] == 200
    promtool_check(text)


def test_oldest_message_age_grows_while_nobody_consumes_and_drops_when_a_worker_starts(
    redis_url, queue, start_exporter, start_worker
) -> None:
    """The age of the oldest waiting message, read without consuming it, dated by the
    task-sent event of its task (the producer is not instrumented)."""
    exporter = start_exporter(redis_url, f"--queues={queue}")
    app = producer(redis_url)
    for i in range(3):
        app.send_task("exp.ok", args=[i], queue=queue)
    age = "celery_queue_oldest_message_age_seconds"

    def aged(than: float) -> float | None:
        got = value(exporter.scrape(), age, queue=queue)
        return got if got is not None and got > than else None

    first = wait_for(lambda: aged(0.0), 20, "an oldest-message age above 0")
    wait_for(lambda: aged(first + 1.0), 20, "the age growing while nobody consumes")
    assert redis.Redis.from_url(redis_url).llen(queue) == 3, "the probe consumed nothing"
    start_worker(redis_url, queue)
    wait_for(
        lambda: (t := exporter.scrape()) and value(t, age, queue=queue) == 0
        and value(t, "celery_queue_messages", queue=queue) == 0,
        40, "the age back to 0 once a worker drained the queue",
    )


def test_a_new_workers_queue_depth_is_served_within_seconds_not_an_inspect_interval(
    redis_url, queue, start_exporter, start_worker
) -> None:
    # Issue 29: with the default intervals (inspect 30 s, queues 10 s) the queue series
    # used to wait for the next inspect after the worker started. The exporter is up and has
    # inspected (no workers yet) before the worker starts.
    exporter = start_exporter(redis_url, "--inspect-interval=30", "--queue-poll-interval=10")
    def inspected() -> bool:
        age = value(exporter.scrape(), "celery_exporter_probe_age_seconds", probe="inspect")
        return age is not None and age >= 0

    wait_for(inspected, 20, "the exporter's first inspect")
    worker = start_worker(redis_url, queue)
    wait_for(lambda: " ready." in worker.log, 40, "the worker ready")
    ready_at = time.monotonic()
    wait_for(lambda: value(exporter.scrape(), "celery_queue_messages", queue=queue) == 0, 15,
             "the worker's queue in celery_queue_messages")
    assert time.monotonic() - ready_at < 15
