"""The assembled exporter without a broker: churn, health, self-metrics."""

from __future__ import annotations

from otel_celery_metrics.exporter import service
from tests.exporter.support import FakeClock, promtool_check, total, value
from tests.exporter.unit.test_handlers import feed, lifecycle, scrape


def test_churning_workers_are_forgotten_and_counters_survive_a_rebuild(
    make_exporter, clock: FakeClock, monkeypatch
) -> None:
    monkeypatch.setattr(service, "REBUILD_AFTER_FORGOTTEN", 50)
    exporter = make_exporter(worker_timeout=5.0, worker_forget_after=30.0, task_hostname_label=True)
    for generation in range(4):
        for i in range(40):
            host = f"celery@pod-{generation}-{i}"
            feed(exporter, [{"type": "worker-heartbeat", "hostname": host, "active": 1}])
        feed(exporter, lifecycle(f"t{generation}"))
        clock.advance(31)
        exporter.maintain()
    feed(exporter, [{"type": "worker-heartbeat", "hostname": "celery@last", "active": 0}])
    text = scrape(exporter)
    assert exporter.instruments.rebuilds >= 2
    assert total(text, "celery_worker_up") == 1
    assert value(text, "celery_worker_up", hostname="celery@last") == 1
    assert "pod-0-" not in text
    # Counters live in the store, not in the rebuilt provider: nothing lost.
    assert value(text, "celery_tasks_total", task_name="app.add", state="SUCCESS") == 4
    promtool_check(text)


def test_health_fails_with_the_masked_url_while_the_broker_is_unreachable(make_exporter) -> None:
    exporter = make_exporter(broker_url="redis://:hunter2@127.0.0.1:1/0")
    ok, problems = exporter.health()
    assert not ok
    assert "redis://:***@127.0.0.1:1/0 unreachable" in problems[0]
    assert "hunter2" not in " ".join(problems)


def test_health_fails_when_the_receive_loop_stands_still(make_exporter, clock: FakeClock) -> None:
    exporter = make_exporter(stuck_after=30.0)
    exporter.receiver.status.connected = True
    exporter.receiver.status.turn("decode")
    assert exporter.health() == (True, [])
    clock.advance(31)
    ok, problems = exporter.health()
    assert not ok and "stuck for 31s" in problems[0]


def test_self_metrics_before_any_event(make_exporter) -> None:
    text = scrape(make_exporter())
    assert value(text, "celery_exporter_broker_connected") == 0
    assert value(text, "celery_exporter_broker_reconnects_total") == 0
    assert value(text, "celery_exporter_last_event_age_seconds") == -1
    assert value(text, "celery_exporter_probe_age_seconds", probe="queues") == -1
    assert value(text, "celery_exporter_event_stream") == 1
    promtool_check(text)


def test_a_forgotten_workers_hostname_labelled_task_series_are_removed(
    make_exporter, clock: FakeClock
) -> None:
    exporter = make_exporter(worker_timeout=5.0, worker_forget_after=30.0, task_hostname_label=True)
    feed(exporter, [{"type": "worker-heartbeat", "hostname": "celery@host-a", "active": 0}])
    feed(exporter, lifecycle("t1"))
    assert value(scrape(exporter), "celery_task_succeeded_total", hostname="celery@host-a") == 1
    clock.advance(31)
    exporter.maintain()
    text = scrape(exporter)
    assert value(text, "celery_task_succeeded_total", hostname="celery@host-a") is None
    assert value(text, "celery_worker_up", hostname="celery@host-a") is None
    assert value(text, "celery_tasks_total", task_name="app.add", state="SUCCESS") == 1


def test_the_receiver_follows_the_broker_url_scheme(make_exporter) -> None:
    kinds = {
        url: type(make_exporter(broker_url=url).receiver).__name__
        for url in ("redis://h/0", "amqp://h//", "amqps://h//", "pyamqp://h//", "rediss://h/0")
    }
    assert kinds == {
        "redis://h/0": "RedisPubSubReceiver", "amqp://h//": "AmqpEventReceiver",
        "amqps://h//": "AmqpEventReceiver", "pyamqp://h//": "AmqpEventReceiver",
        "rediss://h/0": "KombuReceiver",
    }
    forced = make_exporter(broker_url="amqp://h//", receiver="kombu")
    assert type(forced.receiver).__name__ == "KombuReceiver"


def test_on_sqs_the_exporter_is_probe_only_and_its_health_follows_the_depth_probe(
    make_exporter,
) -> None:
    exporter = make_exporter(broker_url="sqs://AKIAEXAMPLE:s3cret@127.0.0.1:1")
    assert isinstance(exporter.receiver, service.NoEventReceiver)
    assert exporter.health() == (
        False, ["probe-only mode: the queue depth probe has not answered yet"])
    exporter.receiver.probe_finished(None)
    assert exporter.health() == (True, [])
    text = scrape(exporter)
    assert value(text, "celery_exporter_event_stream") == 0
    assert value(text, "celery_exporter_broker_connected") == 1
    assert value(text, "celery_exporter_probe_age_seconds", probe="inspect") is None
    for absent in ("celery_exporter_last_event_age_seconds", "celery_worker_up",
                   "celery_exporter_workers_without_task_events"):
        assert absent not in text
    exporter.receiver.probe_finished("EndpointConnectionError: no answer")
    ok, problems = exporter.health()
    assert not ok and "no answer" in problems[0] and "s3cret" not in problems[0]
    promtool_check(text)
