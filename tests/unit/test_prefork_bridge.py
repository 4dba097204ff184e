"""The prefork bridge with real sockets and a real fork: bounded, counted, never blocking."""

from __future__ import annotations

import os
import socket
import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._outcomes import SpanJoin
from otel_celery_metrics._prefork import ForkBridge, SwitchableSink, _ChildForwarder
from otel_celery_metrics._recorder import Recorder
from otel_celery_metrics._safety import FailureLog
from otel_celery_metrics._sdk_setup import attach_histograms
from otel_celery_metrics.settings import Settings

TASKS = mt.METRIC_INDEX[mt.TASKS.name]
RUNTIME = mt.METRIC_INDEX[mt.TASK_RUNTIME.name]


def _points(reader: InMemoryMetricReader, name: str) -> dict[frozenset[tuple[str, str]], float]:
    out: dict[frozenset[tuple[str, str]], float] = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                for point in metric.data.data_points:
                    key = frozenset((k, str(v)) for k, v in (point.attributes or {}).items())
                    out[key] = getattr(point, "value", None) or getattr(point, "count", 0)
    return out


def test_a_full_socket_never_blocks_and_drops_only_past_the_bound() -> None:
    receive_end, send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    send_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    now = [0.0]
    forwarder = _ChildForwarder(
        send_end, FailureLog(), max_pending=1000, clock=lambda: now[0], retry_in_background=False
    )
    started = time.perf_counter()
    # Nobody drains: the socket fills, and flushes must return immediately.
    for _ in range(3000):
        forwarder.emit(TASKS, 1, ("t", "q", "SUCCESS"))
        forwarder.flush()
        now[0] += 0.001  # a task per millisecond: retries after a refusal are spaced out
    assert time.perf_counter() - started < 5, "a flush blocked on a full socket"
    assert forwarder.pending <= 1000
    # Drain everything and flush again: what was sent plus what is reported dropped
    # accounts for every measurement.
    received = dropped = 0

    def drain() -> None:
        nonlocal received, dropped
        import marshal

        while True:
            try:
                data = receive_end.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            lost, batch = marshal.loads(data)  # noqa: S302 - our own datagrams
            dropped += lost
            received += len(batch)

    for _ in range(1000):
        drain()
        now[0] += 1.0
        forwarder.flush()
        if not forwarder.pending:
            break
    drain()
    receive_end.close()
    send_end.close()
    assert forwarder.pending == 0
    assert received + dropped == 3000
    assert dropped > 0


def test_measurements_from_a_forked_child_reach_the_parent_recorder() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    failures = FailureLog()
    recorder = Recorder(provider.get_meter("t"), Settings(), failures)
    attach_histograms(provider, recorder.histogram_points, "t", "0")
    spans = SpanJoin()
    sink = SwitchableSink(recorder, spans)
    bridge = ForkBridge(recorder, sink, spans, failures)
    recorder.before_collect = bridge.drain_now
    pytest.importorskip("celery")
    bridge.install()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                from celery import signals

                signals.worker_process_init.send(sender=None)
                assert bridge.forwarding
                for i in range(100):
                    sink.emit(TASKS, 1, ("child.task", "q", "SUCCESS"))
                    sink.emit(RUNTIME, 0.25, ("child.task", "q"))
                    sink.span(f"task-{i}", 1000 + i, 2000 + i)
                    sink.flush()
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert not bridge.forwarding
        # The parent still records directly.
        sink.emit(TASKS, 1, ("parent.task", "q", "SUCCESS"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            points = _points(reader, "celery.tasks")
            if points.get(frozenset({("task_name", "child.task"), ("queue", "q"),
                                     ("state", "SUCCESS")})) == 100:
                break
            time.sleep(0.05)
        points = _points(reader, "celery.tasks")
        assert points[frozenset({("task_name", "child.task"), ("queue", "q"),
                                 ("state", "SUCCESS")})] == 100
        assert points[frozenset({("task_name", "parent.task"), ("queue", "q"),
                                 ("state", "SUCCESS")})] == 1
        assert _points(reader, "celery.task.runtime")[
            frozenset({("task_name", "child.task"), ("queue", "q")})] == 100
        # Exemplar spans wait for their task's outcome, which looks them up by id.
        assert bridge.take_span("task-7") == (1007, 2007)
        assert bridge.take_span("task-7") is None
    finally:
        bridge.uninstall()
        provider.shutdown()


def test_undecodable_datagram_is_counted_not_raised() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    failures = FailureLog()
    recorder = Recorder(provider.get_meter("t"), Settings(), failures)
    spans = SpanJoin()
    bridge = ForkBridge(recorder, SwitchableSink(recorder, spans), spans, failures)
    bridge._decode_all([b"\x00not marshal"])
    assert _points(reader, "otel_celery_metrics.dropped")[
        frozenset({("reason", "undecodable")})] == 1
    assert failures.count == 1
    provider.shutdown()


def test_a_refused_last_send_is_retried_without_another_task() -> None:
    """A child that goes idle right after a refused send still delivers its last task."""
    receive_end, send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    send_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    forwarder = _ChildForwarder(send_end, FailureLog(), max_pending=100_000)
    sent = 0
    while True:  # fill the socket until a send is refused
        forwarder.emit(TASKS, 1, ("t", "q", "SUCCESS"))
        sent += 1
        forwarder.flush()
        if forwarder.pending:
            break
    # No more tasks. Drain as the main process would; the retry thread delivers the rest.
    import marshal

    received = 0
    receive_end.settimeout(0.5)
    deadline = time.monotonic() + 10
    while received < sent and time.monotonic() < deadline:
        try:
            _lost, batch = marshal.loads(receive_end.recv(1 << 20))  # noqa: S302
            received += len(batch)
        except TimeoutError:
            continue
    receive_end.close()
    send_end.close()
    assert received == sent
