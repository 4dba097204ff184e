"""The pool-child relay: what OpenTelemetry records in pool children reaches the one endpoint.

Real ``opentelemetry-instrument celery worker -P prefork -c 3`` processes on Redis (and SQS),
the application metrics of ``tests.apps.tasks_app`` (``billing.invoices`` counter and
``billing.amount`` histogram with its own buckets, made with the OpenTelemetry API),
children recycled after every task or every second task; read back through real
scrapes of ``/metrics`` and a real OTLP receiver.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.otlp_receiver import OtlpHttpReceiver, Received, otlp_env
from tests.servers import running_prometheus, scrape_config
from tests.support import Samples, Worker, producer, running_worker, value, wait_for

pytestmark = pytest.mark.integration

#: (plan, amount) of the batch every test sends: 12 invoices, 6 per plan.
BATCH = [("pro" if i % 2 else "free", 5.0 * i) for i in range(12)]
#: Bucket counts of billing.amount per plan for BATCH (le 10, 100, 1000, +Inf).
BUCKETS = {"free": [2, 6, 6, 6], "pro": [1, 6, 6, 6]}
SUMS = {"free": 150.0, "pro": 180.0}


def _send_batch(app: object, queue: str) -> None:
    for plan, amount in BATCH:
        app.send_task("tests.invoice", args=(plan, amount), queue=queue)  # type: ignore[attr-defined]


def _assert_billing_exact(samples: Samples) -> None:
    for plan in ("free", "pro"):
        assert value(samples, "billing_invoices_total", plan=plan) == 6
        got = [value(samples, "billing_amount_EUR_bucket", plan=plan, le=le)
               for le in ("10.0", "100.0", "1000.0", "+Inf")]
        assert got == BUCKETS[plan], f"{plan}: buckets {got}"
        assert value(samples, "billing_amount_EUR_sum", plan=plan) == SUMS[plan]
    series = {lbls for (name, lbls) in samples if name == "billing_invoices_total"}
    assert len(series) == 2, f"one series per attribute set, got {series}"
    assert value(samples, "otel_celery_metrics_dropped_total") == 0


@pytest.mark.parametrize(
    ("core_broker_url", "per_child"),
    [("redis", "1"), ("redis", "2"), ("sqs", "1"), ("sqs-prefixed", "2")],
    indirect=["core_broker_url"],
)
def test_application_metrics_from_recycled_children_are_exact_on_the_one_endpoint(
    core_broker_url: str, queue: str, per_child: str
) -> None:
    app = producer(core_broker_url)
    with running_worker(core_broker_url, queue, pool="prefork", concurrency=3,
                        extra_args=("--max-tasks-per-child", per_child)) as worker:
        _send_batch(app, queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and value(s, "billing_invoices_total") == 12 and s,
            timeout=40, what="12 invoices on /metrics",
        )
        _assert_billing_exact(samples)
        log = worker.log_text()
    children = set(re.findall(r"ForkPoolWorker-(\d+)", log))
    assert len(children) >= 12 // int(per_child), f"children did not recycle: {children}"


@pytest.mark.prometheus
def test_a_real_prometheus_sees_one_series_per_plan_from_children_recycled_every_task(
    redis_url: str, queue: str, tmp_path: Path
) -> None:
    app = producer(redis_url)
    with running_worker(redis_url, queue, pool="prefork", concurrency=3,
                        extra_args=("--max-tasks-per-child", "1")) as worker, \
            running_prometheus(tmp_path, "3",
                               [scrape_config("celery", f"127.0.0.1:{worker.port}")]) as prom:
        _send_batch(app, queue)

        def per_plan() -> dict[str, float]:
            result = prom.query('billing_invoices_total{job="celery"}')
            got = {r["metric"]["plan"]: float(r["value"][1]) for r in result}
            return got if got == {"free": 6.0, "pro": 6.0} else {}

        try:
            wait_for(per_plan, timeout=40, what="6 invoices per plan in Prometheus")
            up = prom.query('up{job="celery"}')
            count = prom.query('sum(billing_amount_EUR_count{job="celery"})')
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nprometheus log:\n{prom.log_tail()}") from None
    # Every scrape of the merged exposition was valid (a duplicate family fails it).
    assert [float(r["value"][1]) for r in up] == [1.0]
    assert [float(r["value"][1]) for r in count] == [12.0]


def test_a_task_that_records_nothing_relays_nothing_and_relay_off_keeps_todays_behaviour(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    with running_worker(redis_url, queue, pool="prefork", concurrency=3,
                        extra_args=("--max-tasks-per-child", "1")) as worker:
        for i in range(6):
            app.send_task("tests.ok", args=(i,), queue=queue)
        wait_for(lambda: value(worker.samples(), "celery_tasks_total", state="SUCCESS") == 6,
                 timeout=40, what="6 tasks that record nothing")
        # Children that ran a task exited (one task per child): anything they had
        # to send has arrived by now.
        samples = worker.samples()
        assert value(samples, "otel_celery_metrics_relayed_total", signal="metrics") == 0
        assert value(samples, "otel_celery_metrics_relayed_total", signal="spans") == 0
        app.send_task("tests.invoice", args=("pro", 1.0), queue=queue)
        wait_for(lambda: value(worker.samples(), "billing_invoices_total") == 1,
                 timeout=30, what="the one recording task relayed")
        # One counter point and one histogram point.
        assert value(worker.samples(), "otel_celery_metrics_relayed_total",
                     signal="metrics") == 2

    with running_worker(redis_url, f"{queue}-off", pool="prefork", concurrency=3,
                        env={"OTEL_CELERY_METRICS_RELAY": "false"}) as worker:
        _send_batch(app, f"{queue}-off")
        samples = wait_for(
            lambda: (s := worker.samples())
            and value(s, "celery_tasks_total", state="SUCCESS") == 12 and s,
            timeout=40, what="12 tasks with the relay off",
        )
        # Today's behaviour: the children's application metrics do not reach /metrics.
        assert not any(name.startswith("billing_") for name, _ in samples)
        assert value(samples, "otel_celery_metrics_relayed_total") == 0


def test_a_child_killed_mid_task_loses_nothing_it_recorded_before_its_last_send(
    redis_url: str, queue: str
) -> None:
    app = producer(redis_url)
    with running_worker(redis_url, queue, pool="prefork", concurrency=3,
                        extra_args=("--max-tasks-per-child", "2")) as worker:
        _send_batch(app, queue)
        wait_for(lambda: value(worker.samples(), "billing_invoices_total") == 12,
                 timeout=40, what="first batch")
        # Records one invoice, then sleeps far longer than the relay interval (1 s):
        # the invoice is sent before the kill, so the documented loss bound (what was
        # recorded since the last send) is 0 here.
        app.send_task("tests.invoice_then_sleep", args=("pro", 2000.0, 60), queue=queue)
        wait_for(lambda: value(worker.samples(), "billing_invoices_total") == 13,
                 timeout=30, what="the sleeping task's invoice, relayed while it runs")
        for pid in worker.child_pids():
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: value(worker.samples(), "celery_task_failures_total",
                               exception_type="WorkerLostError") == 1,
                 timeout=30, what="WorkerLostError")
        _send_batch(app, queue)
        samples = wait_for(
            lambda: (s := worker.samples()) and value(s, "billing_invoices_total") == 25 and s,
            timeout=40, what="second batch from the new children",
        )
        assert value(samples, "billing_invoices_total", plan="pro") == 13
        assert value(samples, "billing_amount_EUR_bucket", plan="pro", le="1000.0") == 12
        assert value(samples, "billing_amount_EUR_count", plan="pro") == 13
        assert value(samples, "otel_celery_metrics_dropped_total") == 0


def _run_spans(received: Received) -> list:  # type: ignore[type-arg]
    return [s for s in received.spans() if s.name.startswith("run/")]


def _report(received: Received, worker: Worker) -> str:
    return (f"{len(_run_spans(received))} run spans; "
            f"{received.total('billing.invoices')} invoices\n{worker.log_text()[-4000:]}")


def test_otlp_gets_every_span_and_metric_of_recycled_children_under_one_identity(
    redis_url: str, queue: str
) -> None:
    tasks = 20
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx.endpoint)
        with running_worker(redis_url, queue, pool="prefork", concurrency=3,
                            extra_args=("--max-tasks-per-child", "1"), env=env) as worker:
            app = producer(redis_url)
            for i in range(tasks):
                plan, amount = BATCH[i % len(BATCH)]
                app.send_task("tests.invoice", args=(plan, amount), queue=queue)
            received = rx.received
            wait_for(lambda: len(_run_spans(received)) >= tasks
                     and received.total("billing.invoices") == tasks,
                     timeout=60, what=lambda: _report(received, worker))
            # One more export: nothing arrives twice.
            seen = received.metric_request_count()
            wait_for(lambda: received.metric_request_count() > seen + 1, timeout=10,
                     what="next export")
        assert len(_run_spans(received)) == tasks
        assert received.total("billing.invoices") == tasks
        assert received.total("billing.amount") == tasks
        # opentelemetry-instrumentation-celery's runtime histogram, recorded in the
        # children, exported once for the worker: one series, every task counted.
        flower = received.latest("flower.task.runtime.seconds")
        assert len(flower) == 1, f"flower.task.runtime.seconds series: {list(flower)}"
        assert received.total("flower.task.runtime.seconds") == tasks
        instance_ids = {p.resource_attr("service.instance.id") for p in received.points()}
        assert len(instance_ids) == 1, f"metric identities: {instance_ids}"
        assert {s.resource_attr("service.instance.id") for s in received.spans()} == instance_ids
        assert received.total("otel_celery_metrics.relayed", signal="spans") >= tasks
        assert received.total("otel_celery_metrics.dropped") == 0


def test_warm_shutdown_exports_what_children_recorded_in_their_last_second(
    redis_url: str, queue: str
) -> None:
    """SIGTERM right after the tasks end: what the children recorded is in the final export.

    The export interval is a minute, so whatever arrives was exported at shutdown, after
    the children (never recycled here) sent their points, every second and from their
    exit hook, and the main process read them.
    """
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx.endpoint, interval_ms=60_000)
        worker = Worker(redis_url, queue, pool="prefork", concurrency=3, env=env)
        try:
            worker.wait_ready()
            _send_batch(producer(redis_url), queue)
            wait_for(lambda: len(_run_spans(rx.received)) >= len(BATCH), timeout=30,
                     what="every task's span (the tasks have ended)")
            assert rx.received.metric_request_count() == 0
            assert worker.stop(signal.SIGTERM) == 0
        finally:
            worker.stop()
        received = rx.received
        assert received.total("billing.invoices") == len(BATCH)
        assert received.total("billing.invoices", plan="pro") == 6
        assert received.total("billing.amount") == len(BATCH)


def test_an_otlp_reader_that_prefers_delta_gets_each_relayed_measurement_once(
    redis_url: str, queue: str
) -> None:
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx.endpoint, OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta")
        with running_worker(redis_url, queue, pool="prefork", concurrency=3,
                            extra_args=("--max-tasks-per-child", "2"), env=env) as worker:
            _send_batch(producer(redis_url), queue)
            received = rx.received

            def delta_sum(metric: str, **attrs: str) -> float:
                return sum(p.value for p in received.points(metric)
                           if set(attrs.items()) <= set(p.attrs))

            wait_for(lambda: delta_sum("billing.invoices") == len(BATCH), timeout=40,
                     what=lambda: f"{delta_sum('billing.invoices')} invoices as deltas\n"
                                  f"{worker.log_text()[-3000:]}")
            seen = received.metric_request_count()
            wait_for(lambda: received.metric_request_count() > seen + 1, timeout=10,
                     what="two more exports")
        points = received.points("billing.invoices") + received.points("billing.amount")
        assert {p.temporality for p in points} == {1}, "AGGREGATION_TEMPORALITY_DELTA"
        assert delta_sum("billing.invoices") == len(BATCH)
        assert delta_sum("billing.invoices", plan="free") == 6
        assert delta_sum("billing.amount") == len(BATCH)


def test_every_span_arrives_once_through_autoscale_shrink_and_warm_shutdown(
    redis_url: str, queue: str
) -> None:
    """Spans leave only at shutdown (a 60 s batch delay): the worker's own batch processor
    and OTLP exporter (gzip, as configured) carry every child's spans, including those of
    children the autoscaler stopped and of children recycled after two tasks."""
    wave = 6
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx.endpoint, OTEL_BSP_SCHEDULE_DELAY="60000",
                       OTEL_EXPORTER_OTLP_TRACES_COMPRESSION="gzip",
                       AUTOSCALE_KEEPALIVE="0.5")
        worker = Worker(redis_url, queue, pool="prefork", concurrency=1, env=env,
                        extra_args=("--autoscale", "3,1", "--max-tasks-per-child", "2"))
        try:
            worker.wait_ready()
            app = producer(redis_url)
            received = rx.received

            def pool_size() -> float:
                points = received.points("celery.worker.pool.processes")
                return points[-1].value if points else 0.0

            for wave_number in (1, 2):
                for i in range(wave):
                    plan, amount = BATCH[i]
                    app.send_task("tests.invoice_then_sleep", args=(plan, amount, 1.0),
                                  queue=queue)
                wait_for(lambda: pool_size() == 3, timeout=20, what="the pool grown to 3")
                wait_for(lambda n=wave_number: received.total("celery.tasks") >= n * wave,
                         timeout=40, what=lambda: worker.log_text()[-3000:])
                wait_for(lambda: pool_size() == 1, timeout=20, what="the pool shrunk to 1")
            assert not _run_spans(received), "spans left before shutdown: delay not applied"
            assert worker.stop(signal.SIGTERM) == 0
        finally:
            worker.stop()
        spans = _run_spans(received)
        assert len(spans) == 2 * wave
        assert len({s.span_id for s in spans}) == 2 * wave  # each once
        assert {s.resource_attr("service.instance.id") for s in received.spans()} == {
            p.resource_attr("service.instance.id") for p in received.points()}
        assert received.total("otel_celery_metrics.dropped") == 0
