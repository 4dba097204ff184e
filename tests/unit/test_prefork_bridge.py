"""The prefork bridge with real sockets and real forks: bounded, counted, never blocking."""

from __future__ import annotations

import math
import os
import signal
import socket
import threading
import time

import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    PeriodicExportingMetricReader,
)

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.child_forwarder import ChildForwarder
from otel_celery_metrics.pool.prefork import ForkBridge, SwitchableSink
from otel_celery_metrics.recording.recorder import Recorder
from otel_celery_metrics.recording.settings import Settings
from otel_celery_metrics.sdk_adapter import SdkAdapter
from otel_celery_metrics.worker.outcomes import SpanJoin
from tests.support import wait_for

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
    forwarder = ChildForwarder(
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


def _installed_bridge(provider: MeterProvider) -> tuple[ForkBridge, Recorder, SwitchableSink]:
    failures = FailureLog()
    adapter = SdkAdapter(provider, "t", "0")
    recorder = Recorder(provider.get_meter("t"), Settings(), failures)
    spans = SpanJoin()
    sink = SwitchableSink(recorder, spans)
    bridge = ForkBridge(recorder, sink, spans, failures)
    adapter.apply(recorder.histogram_points, bridge.drain_now, bridge.fence.collecting, False)
    bridge.install()
    return bridge, recorder, sink


def test_measurements_from_a_forked_child_reach_the_parent_recorder() -> None:
    pytest.importorskip("celery")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge, _recorder, sink = _installed_bridge(provider)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                from celery import signals

                signals.worker_process_init.send(sender=None)
                assert bridge.forwarding
                for i in range(100):
                    sink.emit(TASKS, 1, ("child.task", "q", "SUCCESS"))
                    sink.emit(RUNTIME, 0.25, ("child.task", "q", "SUCCESS"))
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
            frozenset({("task_name", "child.task"), ("queue", "q"), ("state", "SUCCESS")})] == 100
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
    forwarder = ChildForwarder(send_end, FailureLog(), max_pending=100_000)
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


def _child_status(pid: int, timeout: float = 15.0) -> int:
    """The child's wait status; kills it if it does not end in time (it hung)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError("the forked child hung")


def test_a_fork_waits_for_a_running_collection_so_the_child_can_collect_and_record() -> None:
    """A fork during a collection copies the SDK's metric locks held; the fence prevents it.

    Without the fence the child below hangs on the copied locks: in the collection it
    starts, and in recording a new instrument's first value (what the SDK's span
    processor does with its own metrics on).
    """
    pytest.importorskip("celery")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge, _recorder, sink = _installed_bridge(provider)
    in_callback = threading.Event()
    release = threading.Event()

    def slow_callback(_options: CallbackOptions) -> list[Observation]:
        in_callback.set()
        release.wait(10)
        return [Observation(1)]

    gauge_meter = provider.get_meter("slow")
    gauge_meter.create_observable_gauge("slow.gauge", callbacks=[slow_callback])
    collector = threading.Thread(target=reader.get_metrics_data, daemon=True)
    try:
        collector.start()
        assert in_callback.wait(10), "the collection did not start"
        released_at: list[float] = []

        def let_go() -> None:
            # Only once the fork below is waiting at the fence: then a fork that did not
            # wait would have happened before this release, and the assertion fails.
            wait_for(lambda: bridge.fence.fork_waiting, timeout=10, interval=0.005,
                     what="the fork to wait at the fence")
            released_at.append(time.monotonic())
            release.set()

        threading.Thread(target=let_go, daemon=True).start()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                release.set()  # the child's own collection must not wait on the copy
                provider.get_meter("child").create_counter("child.counter").add(1)
                sink.emit(TASKS, 1, ("child.task", "q", "SUCCESS"))
                reader.get_metrics_data()
                code = 0
            finally:
                os._exit(code)
        forked_at = time.monotonic()
        assert os.waitstatus_to_exitcode(_child_status(pid)) == 0
        assert released_at and forked_at >= released_at[0], "the fork did not wait"
        collector.join(10)
    finally:
        release.set()
        bridge.uninstall()
        provider.shutdown()


def test_our_locks_are_free_in_a_child_forked_while_another_thread_held_them() -> None:
    """A web server's request thread publishing a task while the process forks, say."""
    pytest.importorskip("celery")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge, recorder, sink = _installed_bridge(provider)
    held = threading.Event()
    done = threading.Event()

    def hold_the_recorder() -> None:
        with recorder._lock:
            held.set()
            done.wait(10)

    holder = threading.Thread(target=hold_the_recorder, daemon=True)
    try:
        holder.start()
        assert held.wait(10)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                sink.emit(TASKS, 1, ("child.task", "q", "SUCCESS"))
                code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(_child_status(pid)) == 0
    finally:
        done.set()
        holder.join(10)
        bridge.uninstall()
        provider.shutdown()


def test_a_pool_childs_silenced_reader_neither_collects_nor_exports() -> None:
    exported: list[object] = []

    class Exporter(MetricExporter):
        def __init__(self) -> None:
            super().__init__()

        def export(self, metrics_data: object, timeout_millis: float = 10_000,
                   **_: object) -> MetricExportResult:
            exported.append(metrics_data)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout: float = 30_000, **_: object) -> None:
            return None

    reader = PeriodicExportingMetricReader(Exporter(), export_interval_millis=math.inf)
    provider = MeterProvider(metric_readers=[reader])
    collected: list[int] = []
    provider.get_meter("t").create_observable_gauge(
        "g", callbacks=[lambda _o: collected.append(1) or [Observation(1)]]
    )
    try:
        reader.collect()
        assert collected and exported  # it worked before
        collected.clear()
        exported.clear()
        assert SdkAdapter(provider, "t", "0").silence_pool_child() is None
        reader.collect()
        reader.force_flush()
        assert not collected, "a silenced reader still runs collections"
        assert not exported
    finally:
        provider.shutdown()


def test_a_collection_waiting_for_a_fork_gives_up_after_the_bound_and_counts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fork that never ends (its after-fork hook never ran) cannot hold collections off
    for good, nor can a reader of the socketpair that never lets go: each collection
    waits a bounded time, serves what there is, and counts the miss."""
    pytest.importorskip("celery")
    monkeypatch.setattr("otel_celery_metrics.pool.prefork._READ_LOCK_WAIT", 0.01)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    bridge, _recorder, sink = _installed_bridge(provider)
    bridge.fence._max_wait = 0.01
    try:
        sink.emit(TASKS, 1, ("t", "q", "SUCCESS"))
        bridge._before_fork()  # a fork starts (creates the socketpair) and never finishes
        assert bridge._read_lock.acquire()  # and a reader that never lets go
        try:
            tasks = _points(reader, mt.TASKS.name)
        finally:
            bridge._read_lock.release()
            bridge._after_fork_in_parent()
        assert tasks == {frozenset({("task_name", "t"), ("queue", "q"), ("state", "SUCCESS")}): 1}
        dropped = _points(reader, mt.SELF_DROPPED.name)
        # One fenced collection gave up waiting for the fork, and its one read of the
        # socketpair (the adapter's hook reads before each collection) gave up too.
        assert dropped[frozenset({("reason", "collection_timeout")})] == 2
    finally:
        bridge.uninstall()
        provider.shutdown()
