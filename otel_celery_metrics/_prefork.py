"""All fork-awareness: pool children forward measurements to the worker's main process.

Why: under the prefork pool, tasks run in forked children, but the meter provider that a
scrape or an OTLP export reads lives in the main process. Left alone, children record
into their private copies (``/metrics`` shows no task series) or each child exports on
its own (new identity per child, a lost last interval on recycle, pre-fork values
re-exported by every child).

How: the first time a process forks (``os.register_at_fork(before=...)``), it creates a
``SOCK_DGRAM`` socketpair and a drain thread. Every child inherits the sending end. When
Celery initialises a pool child (``worker_process_init``), the child's
:class:`SwitchableSink` switches from recording to buffering. A child sends its buffer
as one datagram after each task (``task_postrun``) and when it exits
(``worker_process_shutdown``); the main process' drain thread decodes the datagrams
into the :class:`~otel_celery_metrics._recorder.Recorder`. A socketpair keeps this
private to the worker's process tree: no other local process has an address to write to.

Guarantees and limits (``docs/prefork.md``):
- sends never block a task (``MSG_DONTWAIT``); a full socket buffer keeps the batch
  pending for the next flush; past ``max_pending`` measurements the oldest are dropped
  and counted in ``otel_celery_metrics_dropped_total{reason="pool_buffer_full"}``;
- a child killed with SIGKILL loses only what its running task had buffered (its queue
  wait); Celery itself reports the task as failed (WorkerLostError) from the main
  process, and that is counted there;
- in Celery pool children, the copies of periodic OTLP readers are silenced, so only the
  main process exports, under one identity.
"""

from __future__ import annotations

import atexit
import contextlib
import marshal
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from otel_celery_metrics import metric_table as mt
from otel_celery_metrics._recorder import AttrValues, Measurement, Recorder
from otel_celery_metrics._safety import FailureLog

_DROPPED = mt.METRIC_INDEX[mt.SELF_DROPPED.name]
# Measurements per datagram: keeps each datagram far below the socket's size limit.
_CHUNK = 256
_MAX_DATAGRAM = 1 << 20
# Seconds a child waits after a refused send before trying again (at its next task).
_RETRY_DELAY = 0.005
_MAX_RETRY_DELAY = 1.0
# After waking for a datagram, the drain thread lets a few more arrive before recording:
# one wake-up (and one GIL handoff with the busy main thread) per burst, not per task.
_COALESCE = 0.002
# marshal's format is stable per version; both ends are the same interpreter anyway.
_MARSHAL_VERSION = 4


def _noop() -> None:
    return None


class SwitchableSink:
    """What receivers send to. Records directly until this process is a pool child."""

    def __init__(self, recorder: Recorder) -> None:
        self.emit: Callable[[int, float, AttrValues], None] = recorder.emit
        self.emit_traced: Callable[[int, float, AttrValues, int, int], None] = (
            recorder.emit_traced
        )
        self.flush: Callable[[], None] = _noop


class _ChildForwarder:
    """A pool child's buffer of measurements and its end of the socketpair.

    The task thread appends and sends without blocking. When the main process is behind
    and a send is refused, a short-lived retry thread keeps trying with backoff, so the
    last tasks of a child that goes idle still arrive without waiting for another task.
    """

    def __init__(
        self,
        sock: socket.socket,
        failures: FailureLog,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
        retry_in_background: bool = True,
    ) -> None:
        self._sock = sock
        self._clock = clock
        self._failures = failures
        self._max_pending = max_pending
        self._retry_in_background = retry_in_background
        self._lock = threading.Lock()  # guards _pending and _dropped
        self._send_lock = threading.Lock()  # one sender at a time
        self._pending: list[Measurement] = []
        self._dropped = 0
        # After a refused send, the task thread does not try again before this time:
        # re-encoding a growing backlog after every task is what a busy main process would
        # otherwise make tasks pay. The retry thread covers the gap.
        self._retry_at = 0.0
        self._retrier: threading.Thread | None = None
        self.emit = self._emit

    def _emit(self, metric: int, value: float, attrs: AttrValues) -> None:
        with self._lock:
            self._pending.append((metric, value, attrs))

    def emit_traced(
        self, metric: int, value: float, attrs: AttrValues, trace_id: int, span_id: int
    ) -> None:
        with self._lock:
            self._pending.append((metric, value, attrs, trace_id, span_id))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self, flags: int = socket.MSG_DONTWAIT) -> None:
        if not self._pending:
            return
        if self._retry_at and flags and self._clock() < self._retry_at:
            with self._lock:
                self._trim()
            return
        self._send_pending(flags)

    def _send_pending(self, flags: int, wait: float = 0.0) -> bool:
        """Send everything pending; False if the socket refused (the rest stays pending).

        One sender at a time: if the retry thread is mid-send, the task thread does not
        wait (the retry thread sends what the task added); the final flush at child exit
        waits up to ``wait`` seconds for it, so nothing in its hands is cut off by the exit.
        """
        if wait:
            acquired = self._send_lock.acquire(timeout=wait)
        else:
            acquired = self._send_lock.acquire(blocking=False)
        if not acquired:
            return True
        try:
            return self._send_pending_locked(flags)
        finally:
            self._send_lock.release()

    def _send_pending_locked(self, flags: int) -> bool:
        with self._lock:
            pending, self._pending = self._pending, []
            dropped, self._dropped = self._dropped, 0
        sent = 0
        refused = False
        try:
            while sent < len(pending):
                chunk = pending[sent : sent + _CHUNK]
                self._sock.send(marshal.dumps((dropped, chunk), _MARSHAL_VERSION), flags)
                dropped = 0
                sent += len(chunk)
        except (BlockingIOError, TimeoutError):
            refused = True
        except OSError as exc:
            # The main process is gone or the socket is broken: retrying cannot help.
            self._failures.record("sending measurements to the worker's main process", exc)
            return True
        with self._lock:
            if sent < len(pending) or dropped:
                self._pending[:0] = pending[sent:]
                self._dropped += dropped
                self._trim()
        if refused:
            self._retry_at = self._clock() + _RETRY_DELAY
            self._ensure_retrier()
        else:
            self._retry_at = 0.0
        return not refused

    def _trim(self) -> None:
        """Keep at most ``max_pending`` measurements, dropping (and counting) the oldest.

        Called with the lock held.
        """
        overflow = len(self._pending) - self._max_pending
        if overflow > 0:
            self._dropped += overflow
            del self._pending[:overflow]

    def _ensure_retrier(self) -> None:
        if not self._retry_in_background:
            return
        retrier = self._retrier
        if retrier is not None and retrier.is_alive():
            return
        self._retrier = threading.Thread(
            target=self._retry_loop, name="otel-celery-metrics-retry", daemon=True
        )
        self._retrier.start()

    def _retry_loop(self) -> None:
        delay = _RETRY_DELAY
        while self._pending or self._dropped:
            time.sleep(delay)
            if not self._send_pending(socket.MSG_DONTWAIT):
                delay = min(delay * 2, _MAX_RETRY_DELAY)

    def final_flush(self, timeout: float = 2.0) -> None:
        """Send what is left, waiting up to ``timeout`` for buffer space (child exit)."""
        try:
            self._sock.settimeout(timeout)
            self._send_pending(0, wait=timeout)
        except Exception as exc:  # noqa: BLE001
            self._failures.record("final flush of a pool child", exc)


def _read_queued(sock: socket.socket) -> tuple[list[bytes], bool]:
    """Every datagram queued now, without waiting; and whether the end was signalled
    (an empty datagram from uninstall, or a closed socket)."""
    datagrams: list[bytes] = []
    while True:
        try:
            data = sock.recv(_MAX_DATAGRAM, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return datagrams, False
        except OSError:
            return datagrams, True
        if not data:
            return datagrams, True
        datagrams.append(data)


class ForkBridge:
    """Owns the socketpair, the drain thread and the per-process sink switch."""

    def __init__(
        self,
        recorder: Recorder,
        sink: SwitchableSink,
        failures: FailureLog,
        max_pending: int = 50_000,
        on_pool_child_start: Callable[[], None] | None = None,
    ) -> None:
        self._recorder = recorder
        self._sink = sink
        self._failures = failures
        self._max_pending = max_pending
        self._on_pool_child_start = on_pool_child_start
        self._active = False
        self._lock = threading.Lock()
        self._decode_lock = threading.Lock()
        self._main_pid: int | None = None
        self._receive_end: socket.socket | None = None
        self._send_end: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._forwarder: _ChildForwarder | None = None
        self._connected: list[tuple[Any, Callable[..., None]]] = []
        self._fork_hooks_registered = False

    # -- lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        self._active = True
        if not self._fork_hooks_registered:
            # register_at_fork has no unregister; the hooks check _active instead.
            os.register_at_fork(before=self._before_fork)
            atexit.register(self.drain_now)
            self._fork_hooks_registered = True
        from celery import signals

        for signal, receiver in (
            (signals.worker_process_init, self._on_pool_child_init),
            (signals.worker_process_shutdown, self._on_child_shutdown),
            (signals.worker_shutdown, self._on_worker_shutdown),
        ):
            signal.connect(receiver, weak=False, dispatch_uid=f"otel_celery_metrics.{id(self)}")
            self._connected.append((signal, receiver))

    def uninstall(self) -> None:
        self._active = False
        for signal, _receiver in self._connected:
            signal.disconnect(dispatch_uid=f"otel_celery_metrics.{id(self)}")
        self._connected.clear()
        self.drain_now()
        if self._receive_end is not None and self._main_pid == os.getpid():
            # Wakes the drain thread (it exits on an empty datagram) and frees the fds.
            send_end = self._send_end
            if send_end is not None:
                with contextlib.suppress(OSError):
                    send_end.send(b"", socket.MSG_DONTWAIT)
            if self._thread is not None:
                self._thread.join(timeout=2)
            self._receive_end.close()
            if send_end is not None:
                send_end.close()
            self._receive_end = self._send_end = self._thread = None
        self._recorder_sink_restore()

    def _recorder_sink_restore(self) -> None:
        self._sink.emit = self._recorder.emit
        self._sink.emit_traced = self._recorder.emit_traced
        self._sink.flush = _noop

    @property
    def forwarding(self) -> bool:
        """True in a pool child whose measurements go to the main process."""
        return self._forwarder is not None

    # -- main process ------------------------------------------------------------------------

    def _before_fork(self) -> None:
        if not self._active or self._forwarder is not None:
            return
        try:
            self._ensure_started()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("starting the prefork bridge", exc)

    def _ensure_started(self) -> None:
        with self._lock:
            if self._receive_end is not None and self._main_pid == os.getpid():
                return
            receive_end, send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for sock in (receive_end, send_end):
                sock.set_inheritable(False)  # children inherit by fork, not by exec
            self._receive_end, self._send_end = receive_end, send_end
            self._main_pid = os.getpid()
            self._thread = threading.Thread(
                target=self._drain_loop, name="otel-celery-metrics-drain", daemon=True
            )
            self._thread.start()

    def _drain_loop(self) -> None:
        sock = self._receive_end
        assert sock is not None
        while True:
            try:
                data = sock.recv(_MAX_DATAGRAM)
            except OSError:
                return  # closed by uninstall
            if not data:
                return
            # Held until the burst is recorded, so drain_now() at shutdown waits for it
            # instead of letting the final export run while a burst is in hand.
            with self._decode_lock:
                time.sleep(_COALESCE)
                more, closed = _read_queued(sock)
                self._decode_all([data, *more])
            if closed:
                return

    def drain_now(self) -> None:
        """Record every datagram already queued (worker shutdown; before the final export)."""
        sock = self._receive_end
        if sock is None or self._main_pid != os.getpid():
            return
        with self._decode_lock:
            datagrams, _closed = _read_queued(sock)
            self._decode_all(datagrams)

    def _decode_all(self, datagrams: list[bytes]) -> None:
        measurements: list[Measurement] = []
        for data in datagrams:
            try:
                dropped, batch = marshal.loads(data)  # noqa: S302 - from our own children only
                if dropped:
                    self._recorder.emit(_DROPPED, int(dropped), ("pool_buffer_full",))
                measurements.extend(batch)
            except Exception as exc:  # noqa: BLE001
                self._recorder.emit(_DROPPED, 1, ("undecodable",))
                self._failures.record("decoding measurements from a pool child", exc)
        self._recorder.emit_many(measurements)

    def _on_worker_shutdown(self, **_: Any) -> None:
        self.drain_now()

    # -- pool child --------------------------------------------------------------------------

    def _on_pool_child_init(self, **_: Any) -> None:
        """In a Celery pool child: forward to the main process, silence inherited exporters.

        Only Celery pool children switch (``worker_process_init``), not every fork: the
        daemonizing forks of ``celery worker --detach`` and the children of a forking web
        server that publishes tasks keep recording and exporting on their own.
        """
        send_end = self._send_end
        if not self._active or send_end is None or self._main_pid != os.getppid():
            return
        try:
            self._thread = None  # the drain thread belongs to the main process
            self._forwarder = _ChildForwarder(send_end, self._failures, self._max_pending)
            self._sink.emit = self._forwarder.emit
            self._sink.emit_traced = self._forwarder.emit_traced
            self._sink.flush = self._forwarder.flush
        except Exception as exc:  # noqa: BLE001
            self._failures.record("switching a pool child to forwarding", exc)
            return
        if self._on_pool_child_start is not None:
            try:
                self._on_pool_child_start()
            except Exception as exc:  # noqa: BLE001
                self._failures.record("silencing a pool child's exporters", exc)

    def _on_child_shutdown(self, **_: Any) -> None:
        if self._forwarder is not None:
            self._forwarder.final_flush()
            # Pool children leave with os._exit, skipping atexit: without this, the last
            # spans a recycled child buffered (opentelemetry-instrumentation-celery's)
            # would never be exported. Bounded, so a dead Collector cannot hold the exit.
            try:
                force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
                if force_flush is not None:
                    force_flush(1000)
            except Exception as exc:  # noqa: BLE001
                self._failures.record("flushing a pool child's spans", exc)
