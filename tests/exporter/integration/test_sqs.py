"""The exporter on SQS (ElasticMQ): probe-only mode, true to what it can see.

SQS has no fanout, so no Celery event or broadcast can reach the exporter. It says so in
one log line, creates no queue, reports no event, worker or inspect series, and offers
queue depth: waiting, in flight and delayed, for the Celery queue names it is given,
with and without a ``queue_name_prefix``. ``/health`` and broker_connected follow the
depth probe.
"""

from __future__ import annotations

import json
import uuid

import pytest

from otel_celery_metrics.exporter.sqs_depth import sqs_queue_name
from tests.exporter.integration.conftest import ExporterProc, Proc, free_port
from tests.exporter.support import samples, value, wait_for
from tests.sqs_server import SQS_TEST_OPTIONS, ElasticMQ
from tests.support import TRANSPORT_OPTIONS_ENV, producer, running_worker, unique_queue

pytestmark = pytest.mark.integration

#: What only events or broadcasts can feed: never offered in probe-only mode.
EVENT_SERIES = (
    "celery_worker_up", "celery_task_sent_total", "celery_tasks_total", "celery_queue_workers",
    "celery_exporter_last_event_age_seconds", "celery_exporter_workers_without_task_events",
    "celery_exporter_events_received_total",
)


@pytest.mark.parametrize("prefix", ["", "pfx-"], ids=["no-prefix", "queue_name_prefix"])
def test_the_exporter_on_sqs_is_probe_only_leaves_no_queue_and_reports_three_depths(
    elasticmq: ElasticMQ, monkeypatch: pytest.MonkeyPatch, procs: list[Proc], prefix: str
) -> None:
    options = {**SQS_TEST_OPTIONS, "queue_name_prefix": f"{prefix}{uuid.uuid4().hex[:4]}-"
               if prefix else ""}
    monkeypatch.setenv(TRANSPORT_OPTIONS_ENV, json.dumps(options))
    url = elasticmq.broker_url()
    base = unique_queue("dep")
    held, waiting, missing = f"{base}.held", f"{base}-waiting", f"{base}-missing"
    app = producer(url)
    for i in range(3):  # nobody consumes this queue: 3 waiting
        app.send_task("tests.ok", args=(i,), queue=waiting)
    sqs = elasticmq.client()
    waiting_url = sqs.get_queue_url(QueueName=sqs_queue_name(waiting, options["queue_name_prefix"]))
    for _ in range(2):  # sent with a delay: not visible yet
        sqs.send_message(QueueUrl=waiting_url["QueueUrl"], MessageBody="{}", DelaySeconds=600)
    with running_worker(url, held, pool="prefork", concurrency=2, instrument=False) as worker:
        app.send_task("tests.ok", args=(1,), queue=held, countdown=600)  # held by the worker
        before = set(elasticmq.queue_names())
        exporter = ExporterProc(
            url, *(f"--broker-transport-option={key}={value}" for key, value in options.items()),
            f"--queues={held},{waiting},{missing}", "--log-level=info",
        )
        procs.append(exporter)

        def depths() -> str | None:
            text = exporter.scrape()
            ok = (value(text, "celery_queue_messages", queue=waiting) == 3
                  and value(text, "celery_queue_delayed", queue=waiting) == 2
                  and value(text, "celery_queue_in_flight", queue=held) == 1
                  and value(text, "celery_queue_messages", queue=held) == 0)
            return text if ok else None

        text = wait_for(depths, 30, "waiting 3, delayed 2 and in flight 1")
        assert exporter.get("/health") == (200, "ok\n")
        exporter.stop()
        log = exporter.log
        assert worker.proc.poll() is None
    assert value(text, "celery_exporter_broker_connected") == 1
    assert value(text, "celery_exporter_event_stream") == 0
    assert value(text, "celery_exporter_probe_age_seconds", probe="queues") is not None
    assert value(text, "celery_exporter_probe_age_seconds", probe="inspect") is None
    names = {name for name, _labels, _v in samples(text)}
    assert not names & set(EVENT_SERIES), names & set(EVENT_SERIES)
    assert all(labels.get("queue") != missing for _n, labels, _v in samples(text))
    # One clear line, at WARNING, naming the mode; nothing claims an event queue.
    said = [line for line in log.splitlines() if "probe-only mode" in line]
    assert len(said) == 1 and " WARNING " in said[0], said
    assert "transport sqs has no fanout" in said[0]
    assert "reading events" not in log
    # The exporter created nothing, on start or on stop: no celeryev queue, no "missing".
    assert set(elasticmq.queue_names()) == before
    assert not [q for q in before if "celeryev" in q or "pidbox" in q or "missing" in q]


def test_the_exporter_on_an_unreachable_sqs_reports_it_unhealthy(procs: list[Proc]) -> None:
    exporter = ExporterProc(f"sqs://test:secret@127.0.0.1:{free_port()}",
                            "--broker-transport-option=region=us-east-1", "--queues=anything")
    procs.append(exporter)
    status, body = wait_for(lambda: (r := exporter.get("/health")) and "unreachable" in r[1]
                            and r, 20, "/health to report the broker unreachable")
    assert status == 503
    assert "secret" not in body and "secret" not in exporter.log
    text = exporter.scrape()
    assert value(text, "celery_exporter_broker_connected") == 0
    assert value(text, "celery_queue_messages", queue="anything") is None
