"""The Collector sidecar path, worker side: real workers push OTLP to a real receiver.

``opentelemetry-instrument celery worker`` with ``OTEL_METRICS_EXPORTER=otlp`` and
``OTEL_TRACES_EXPORTER=otlp``, opentelemetry-instrumentation-celery enabled next to ours,
and the ``celery_worker`` resource detector: what a Collector's ``otlp`` receiver gets is
our task metrics with exact counts, the task spans, one worker identity, and exemplars
that point at those spans.
"""

from __future__ import annotations

import re
import signal
import socket
from collections.abc import Iterator

import pytest

from tests.integration.mixed_batch import EXECUTED, EXPECTED_STATES, send_mixed_batch
from tests.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, Received, otlp_env
from tests.support import Worker, producer, running_worker, wait_for

pytestmark = pytest.mark.integration

TASKS = "celery.tasks"
RUNTIME = "celery.task.runtime"
EXECUTED_NAMES = {"tests.ok", "tests.fail", "tests.flaky", "tests.ignored", "tests.rejected"}


def _run_spans(received: Received) -> list:  # type: ignore[type-arg]
    return [s for s in received.spans() if s.name.startswith("run/")]


def _span_report(received: Received, worker: Worker) -> str:
    """What a missing-span failure needs: which run spans came, and the worker's log."""
    names = sorted(s.name for s in _run_spans(received))
    return (f"every run span ({EXECUTED}); got {len(names)}: {names}\n"
            f"span requests: {received.trace_request_count()}\n"
            f"worker log tail:\n{worker.log_text()[-4000:]}\n"
            f"thread stacks:\n{worker.thread_stacks()[-12000:]}")


def _all_counted(received: Received) -> bool:
    return received.total(TASKS) >= sum(EXPECTED_STATES.values())


def _expected_nodename(worker: Worker) -> str:
    return worker.node.replace("%h", socket.gethostname())


def assert_exact_counts(received: Received, queue: str) -> None:
    for (task, state), count in EXPECTED_STATES.items():
        got = received.total(TASKS, task_name=task, state=state, queue=queue)
        assert got == count, f"{task} {state}: {got} != {count}"
    assert received.total(TASKS) == sum(EXPECTED_STATES.values())
    assert received.total(RUNTIME) == EXECUTED
    assert received.total("otel_celery_metrics.dropped") == 0


def assert_one_worker_identity(received: Received, worker: Worker) -> str:
    """Every metric export and every span carries the same worker resource."""
    points = received.points()
    assert points, "no metric points arrived"
    instance_ids = {p.resource_attr("service.instance.id") for p in points}
    assert len(instance_ids) == 1, f"metric exports under several identities: {instance_ids}"
    (instance_id,) = instance_ids
    assert instance_id
    resources = {p.resource for p in points}
    assert len(resources) == 1, "the resource changed between exports"
    resource = dict(next(iter(resources)))
    assert resource["service.name"] == "tests-worker"
    assert resource["host.name"] == socket.gethostname()
    assert resource["celery.worker.hostname"] == _expected_nodename(worker)
    spans = received.spans()
    span_ids = {s.resource_attr("service.instance.id") for s in spans}
    assert span_ids == {instance_id}, "spans of pool children carry another identity"
    assert {s.resource_attr("celery.worker.hostname") for s in spans} == {
        _expected_nodename(worker)
    }
    return str(instance_id)


def assert_exemplars_link_to_task_spans(received: Received) -> None:
    run_spans = {(s.trace_id, s.span_id): s.name for s in _run_spans(received)}
    linked: set[str] = set()
    for point in received.points(RUNTIME):
        for exemplar in point.exemplars:
            span_name = run_spans.get((exemplar.trace_id, exemplar.span_id))
            task = point.attr("task_name")
            assert span_name == f"run/{task}", (
                f"exemplar {exemplar} on {task} does not point at one of its run spans"
            )
            linked.add(task)
    # The SDK keeps one exemplar per bucket per collection: every task name that ran
    # was measured in some collection, so each has at least one.
    assert linked == EXECUTED_NAMES


@pytest.fixture(params=["http", "grpc"])
def receiver(request: pytest.FixtureRequest) -> Iterator[OtlpHttpReceiver | OtlpGrpcReceiver]:
    rx = OtlpHttpReceiver() if request.param == "http" else OtlpGrpcReceiver()
    with rx:
        yield rx


def _protocol(rx: OtlpHttpReceiver | OtlpGrpcReceiver) -> str:
    return "grpc" if isinstance(rx, OtlpGrpcReceiver) else "http/protobuf"


@pytest.mark.parametrize(
    ("pool", "extra"),
    [("solo", ()), ("prefork", ())],
    ids=["solo", "prefork-c2"],
)
def test_metrics_spans_identity_and_exemplars_arrive_through_one_otlp_pipeline(
    redis_url: str, queue: str, receiver: OtlpHttpReceiver | OtlpGrpcReceiver, pool: str,
    extra: tuple[str, ...],
) -> None:
    env = otlp_env(receiver.endpoint, _protocol(receiver))
    with running_worker(redis_url, queue, pool=pool, concurrency=2, extra_args=extra,
                        env=env) as worker:
        send_mixed_batch(producer(redis_url), queue)
        rx = receiver.received
        wait_for(lambda: _all_counted(rx), timeout=30, what="all terminal states over OTLP")
        wait_for(lambda: len(_run_spans(rx)) >= EXECUTED, timeout=15,
                 what=lambda: _span_report(rx, worker))
        # One more export after everything was counted: late duplicates would show here.
        seen = rx.metric_request_count()
        wait_for(lambda: rx.metric_request_count() > seen + 1, timeout=10, what="next export")
        assert_exact_counts(rx, queue)
        assert len(_run_spans(rx)) == EXECUTED
        assert {s.scope for s in _run_spans(rx)} == {"opentelemetry.instrumentation.celery"}
        assert_one_worker_identity(rx, worker)
        assert_exemplars_link_to_task_spans(rx)


def test_one_instance_id_while_pool_children_recycle(redis_url: str, queue: str) -> None:
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx.endpoint)
        with running_worker(redis_url, queue, pool="prefork", concurrency=2,
                            # A task received but never started here was our doing: a
                            # span force-flush in the child's exit hook widened
                            # billiard's window for handing a task to an exiting child
                            # (docs/collector.md, "Known limits"). Fixed; recycling
                            # every 3 tasks still recycles children several times.
                            extra_args=("--max-tasks-per-child", "3"), env=env) as worker:
            send_mixed_batch(producer(redis_url), queue)
            wait_for(lambda: _all_counted(rx.received), timeout=30, what="all terminal states")
            wait_for(lambda: rx.received.total(RUNTIME) >= EXECUTED, timeout=10,
                     what="runtime count")
            log = worker.log_text()
        received = rx.received
        assert_exact_counts(received, queue)
        # 16 executions at 3 per child: children came and went (Celery numbers each new
        # pool process), and the exports never changed identity. Spans from children
        # carry the same id. (A recycled child's unflushed spans are lost: see
        # docs/collector.md.)
        children = set(re.findall(r"ForkPoolWorker-(\d+)", log))
        assert len(children) > 2, f"no recycling happened: {children}"
        points = received.points()
        assert len({p.resource_attr("service.instance.id") for p in points}) == 1
        span_ids = {s.resource_attr("service.instance.id") for s in received.spans()}
        assert span_ids <= {p.resource_attr("service.instance.id") for p in points}


def test_warm_shutdown_exports_the_last_measurements(redis_url: str, queue: str) -> None:
    """SIGTERM right after the tasks finish: the final export carries every count.

    The export interval is a minute, so no periodic export happens during the test:
    whatever arrives was exported at shutdown.
    """
    with OtlpHttpReceiver() as rx:
        env = otlp_env(rx.endpoint, interval_ms=60_000)
        worker = Worker(redis_url, queue, pool="prefork", concurrency=2, env=env)
        try:
            worker.wait_ready()
            app = producer(redis_url)
            for i in range(8):
                app.send_task("tests.ok", args=(i,), queue=queue)
            for _ in range(3):
                app.send_task("tests.fail", queue=queue)
            # Spans leave the pool children within 200 ms of each task: when all eleven
            # are here, every task has finished.
            wait_for(lambda: len(_run_spans(rx.received)) >= 11, timeout=30,
                     what="all tasks finished")
            assert rx.received.metric_request_count() == 0
            assert worker.stop(signal.SIGTERM) == 0
        finally:
            worker.stop()
        received = rx.received
        assert received.metric_request_count() >= 1, "nothing exported at shutdown"
        assert received.total(TASKS, task_name="tests.ok", state="SUCCESS") == 8
        assert received.total(TASKS, task_name="tests.fail", state="FAILURE") == 3
        assert received.total(RUNTIME) == 11
        assert received.total("celery.tasks.received") == 11
