"""All fork-awareness: what a pool child must do differently, and its channel to the main process.

Task outcomes need no channel: Celery's pool already hands every result to the worker's
main process, where :mod:`otel_celery_metrics.worker.outcomes` records it. What remains
process-specific lives here:

- in Celery pool children (``worker_process_init``), the copies of periodic (OTLP)
  readers are silenced: only the main process exports, under one identity, and values
  recorded before the fork are not exported again by every child;
- the few things only a child knows travel to the main process over a private
  ``SOCK_DGRAM`` socketpair created at the main process' first fork
  (``os.register_at_fork``): the span each task ran in (exemplars, only when they are
  on) and failures of our own code in the child (``internal_error``). A child sends one
  datagram per task (``task_postrun``) and what is left when it exits
  (``worker_process_shutdown``). The main process reads what is queued when it needs it
  (when it records the task's outcome, before every collection, at shutdown), and a span
  always arrives before its task's result: the child sends it before it hands the result
  to the pool;
- the same socketpair carries the pool-child relay's entries
  (:mod:`otel_celery_metrics.pool.relay`: metric points and spans recorded in the child);
  with the relay on, a reader thread of the main process also reads datagrams as they
  arrive. Reads and decoding are serialized, so an exemplar span read by that thread is
  in place before the outcome's own read finds the socket empty;
- a child's exit hook makes one non-blocking send and nothing else (see
  :meth:`ForkBridge._on_child_shutdown` for why nothing may delay that exit);
- forks never copy a lock that another thread holds mid-collection
  (:class:`CollectionFence`), and our own locks are new in every child: a lock copied
  while held is never released in the child, and whatever then takes it there hangs.

Guarantees and limits (``docs/prefork.md``): sends never block a task
(``MSG_DONTWAIT``); a refused send is retried from a short-lived thread with backoff;
past ``max_pending`` entries the oldest are dropped and counted in
``otel_celery_metrics_dropped_total{reason="pool_buffer_full"}``. A socketpair keeps
this private to the worker's process tree.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.child_forwarder import ChildForwarder
from otel_celery_metrics.pool.codec import (
    EXEMPLAR_ENTRY,
    POINT_ENTRY,
    SPAN_ENTRY,
    SPAN_OTLP_ENTRY,
    decode_datagram,
)
from otel_celery_metrics.pool.fence import CollectionFence
from otel_celery_metrics.pool.relay import PoolRelay
from otel_celery_metrics.recording.admission import AttrValues
from otel_celery_metrics.recording.recorder import Measurement, Recorder, SpanIds
from otel_celery_metrics.worker.outcomes import SpanJoin

_DROPPED = mt.METRIC_INDEX[mt.SELF_DROPPED.name]
_MAX_DATAGRAM = 1 << 20
# Send buffer asked for (the kernel caps it at net.core.wmem_max): every child writes
# through the same socket.
_SEND_BUFFER = 1 << 20
# Seconds a collection waits for another reader of the socketpair before serving what it has.
_READ_LOCK_WAIT = 1.0


def _noop() -> None:
    return None


class SwitchableSink:
    """What receivers send to. Records directly until this process is a pool child.

    ``emit``/``span``/``flush`` are attributes bound to the current target, not methods
    that dispatch: the per-task path pays no extra call. Only the sink itself switches
    them (:meth:`forward_to` in a pool child, :meth:`restore`).
    """

    def __init__(self, recorder: Recorder, spans: SpanJoin) -> None:
        self._recorder = recorder
        self._spans = spans
        self.emit: Callable[[int, float, AttrValues], None] = recorder.emit
        self.span: Callable[[str, int, int], None] = self._put_span
        self.flush: Callable[[], None] = _noop

    def _put_span(self, task_id: str, trace_id: int, span_id: int) -> None:
        self._spans.put(task_id, (trace_id, span_id))

    def forward_to(self, forwarder: ChildForwarder) -> None:
        """From now on, send everything to the main process through ``forwarder``."""
        self.emit = forwarder.emit
        self.span = forwarder.span
        self.flush = forwarder.flush

    def restore(self) -> None:
        self.emit = self._recorder.emit
        self.span = self._put_span
        self.flush = _noop


def _read_queued(sock: socket.socket) -> list[bytes]:
    """Every datagram queued now, without waiting."""
    datagrams: list[bytes] = []
    while True:
        try:
            data = sock.recv(_MAX_DATAGRAM, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return datagrams
        except OSError:
            return datagrams  # closed by uninstall
        if not data:
            return datagrams
        datagrams.append(data)


class ForkBridge:
    """Owns the socketpair and the per-process sink switch."""

    def __init__(
        self,
        recorder: Recorder,
        sink: SwitchableSink,
        spans: SpanJoin,
        failures: FailureLog,
        *,
        max_pending: int = 50_000,
        on_pool_child_start: Callable[[], None] | None = None,
        fence: CollectionFence | None = None,
        relay: PoolRelay | None = None,
    ) -> None:
        self._recorder = recorder
        #: Collections take ``fence.collecting()`` (wired by the instrumentor).
        self.fence = fence or CollectionFence(on_wait_timeout=self._count_wait_timeout)
        self._sink = sink
        self._spans = spans
        self._failures = failures
        self._max_pending = max_pending
        self._on_pool_child_start = on_pool_child_start
        #: Relays what OpenTelemetry records in pool children (None: relay off).
        self._relay = relay
        self._active = False
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._main_pid: int | None = None
        self._receive_end: socket.socket | None = None
        self._send_end: socket.socket | None = None
        self._forwarder: ChildForwarder | None = None
        self._connected: list[tuple[Any, Callable[..., None]]] = []
        #: The process that ran Celery's worker_init, and the one whose relay reader runs.
        self._worker_pid: int | None = None
        self._reader_pid: int | None = None
        self._fork_hooks_registered = False

    def _count_wait_timeout(self, what: str) -> None:
        self._recorder.collection_timed_out(what)

    # -- lifecycle ---------------------------------------------------------------------------

    def install(self) -> None:
        self._active = True
        if not self._fork_hooks_registered:
            # register_at_fork has no unregister; the hooks check _active instead.
            os.register_at_fork(
                before=self._before_fork,
                after_in_parent=self._after_fork_in_parent,
                after_in_child=self._after_fork_in_child,
            )
            atexit.register(self.drain_now)
            self._fork_hooks_registered = True
        from celery import signals

        for signal, receiver in (
            (signals.worker_process_init, self._on_pool_child_init),
            (signals.worker_process_shutdown, self._on_child_shutdown),
            (signals.worker_shutdown, self._on_worker_shutdown),
            (signals.worker_init, self._on_worker_init),
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
            with self._read_lock:
                self._receive_end.close()
                if self._send_end is not None:
                    self._send_end.close()
                self._receive_end = self._send_end = None
        self._sink.restore()
        if self._relay is not None:
            self._relay.detach()

    @property
    def forwarding(self) -> bool:
        """True in a pool child whose measurements go to the main process."""
        return self._forwarder is not None

    # -- main process ------------------------------------------------------------------------

    def _before_fork(self) -> None:
        if not self._active:
            return
        try:
            if self._forwarder is None:
                self._ensure_started()
                self._ensure_relay_reader()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("starting the prefork bridge", exc)
        try:
            if not self.fence.before_fork():
                self._failures.record(
                    "waiting for a metric collection before a fork",
                    TimeoutError("a collection was still running; forked anyway"),
                )
        except Exception as exc:  # noqa: BLE001
            self._failures.record("waiting for a metric collection before a fork", exc)

    def _after_fork_in_parent(self) -> None:
        # Also after a failed fork: the fence must open again whatever happened.
        with contextlib.suppress(Exception):
            self.fence.after_fork_in_parent()

    def _after_fork_in_child(self) -> None:
        """Every fork's child (not only pool children): our locks start free.

        The fence covered collections; this covers any other thread that held one of
        our locks at the fork (a web server's request thread publishing a task, say).
        """
        if not self._active:
            return
        with contextlib.suppress(Exception):
            self.fence.after_fork_in_child()
            self._lock = threading.Lock()
            self._read_lock = threading.Lock()
            if self._relay is not None:
                self._relay.reinit_locks()
            self._recorder.reinit_locks()
            self._spans.reinit_locks()
            self._failures.reinit_locks()

    def _ensure_started(self) -> None:
        with self._lock:
            if self._receive_end is not None and self._main_pid == os.getpid():
                return
            receive_end, send_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for sock in (receive_end, send_end):
                sock.set_inheritable(False)  # children inherit by fork, not by exec
                # Non-blocking on the socket, not only per call (MSG_DONTWAIT): gevent's
                # and eventlet's sockets ignore that flag and wait for the socket to become
                # ready, so a scrape's read with nothing queued waited forever under
                # -P gevent. A non-blocking socket raises instead, with every library.
                sock.setblocking(False)
            with contextlib.suppress(OSError):
                send_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            self._receive_end, self._send_end = receive_end, send_end
            self._main_pid = os.getpid()

    def _ensure_relay_reader(self) -> None:
        """In a Celery worker's main process about to fork its pool: read as datagrams arrive.

        Relayed spans must reach the exporter without waiting for a metric collection,
        and children must not find the socket full. Only after ``worker_init`` in this
        process: other forking processes (a web server that publishes tasks, the
        launcher of ``celery worker --detach``) get no thread.
        """
        with self._lock:
            receive_end = self._receive_end
            if (self._relay is None or self._worker_pid != os.getpid() or receive_end is None
                    or self._reader_pid == os.getpid()):
                return
            self._reader_pid = os.getpid()
            self._relay.before_first_fork()
            threading.Thread(
                target=self._read_loop, args=(receive_end,),
                name="otel-celery-metrics-relay-reader", daemon=True,
            ).start()

    def _read_loop(self, sock: socket.socket) -> None:
        while self._active and self._receive_end is sock:
            try:
                ready, _, _ = select.select([sock], [], [], 1.0)
            except (OSError, ValueError):
                return  # closed by uninstall
            if ready:
                self.drain_now()

    def take_span(self, task_id: str) -> SpanIds | None:
        """The span task ``task_id`` ran in, if its process sent one (exemplars).

        Under prefork the child sent it before handing over the result that led here, so
        it is already queued on the socket: read what is queued, then look it up.
        """
        if self._receive_end is not None:
            self.drain_now()
        return self._spans.take(task_id)

    def drain_now(self) -> None:
        """Record every datagram already queued, without waiting (main process only)."""
        sock = self._receive_end
        if sock is None or self._main_pid != os.getpid():
            return
        try:
            # Bounded: a collection that cannot read now serves what it has (and the next
            # one reads what is queued); the holder only reads what is queued, so this
            # timeout means something is wrong, and is counted.
            if not self._read_lock.acquire(timeout=_READ_LOCK_WAIT):
                self._count_wait_timeout("reading measurements from pool children")
                return
            spans: list[Any] = []
            try:
                if self._receive_end is None:
                    return
                # Recorded under the lock too: what one thread read must be recorded (and an
                # exemplar's span ids be in the join) before another thread, finding the
                # socket empty, goes on to collect or to take_span.
                datagrams = _read_queued(sock)
                if datagrams:
                    spans = self._decode_all(datagrams)
            finally:
                self._read_lock.release()
            # Relayed spans go to the span processors outside the lock: a processor may
            # export synchronously, and take_span on the worker's event loop waits for it.
            if spans:
                self._receive_relayed(spans)
        except Exception as exc:  # noqa: BLE001
            self._failures.record("reading measurements from pool children", exc)

    def _decode_all(self, datagrams: list[bytes]) -> list[Any]:
        """Record the measurements and relayed metric points; return the relayed spans."""
        measurements: list[Measurement] = []
        points: list[Any] = []
        spans: list[Any] = []
        for data in datagrams:
            try:
                dropped, batch = decode_datagram(data)
                if dropped:
                    self._recorder.emit(_DROPPED, int(dropped), ("pool_buffer_full",))
                for entry in batch:
                    if entry[0] == EXEMPLAR_ENTRY:
                        self._spans.put(entry[1], (entry[2], entry[3]))
                    elif entry[0] == POINT_ENTRY:
                        points.append(entry)
                    elif entry[0] == SPAN_OTLP_ENTRY or entry[0] == SPAN_ENTRY:
                        spans.append(entry)
                    else:
                        measurements.append(entry)
            except Exception as exc:  # noqa: BLE001
                self._recorder.emit(_DROPPED, 1, ("undecodable",))
                self._failures.record("decoding measurements from a pool child", exc)
        if measurements:
            self._recorder.emit_many(measurements)
        if points:
            self._receive_relayed(points)
        return spans

    def _receive_relayed(self, entries: list[Any]) -> None:
        if not entries or self._relay is None:
            return
        try:
            self._relay.receive(entries)
        except Exception as exc:  # noqa: BLE001
            self._recorder.emit(_DROPPED, len(entries), ("undecodable",))
            self._failures.record("merging what a pool child relayed", exc)

    def _on_worker_init(self, **_: Any) -> None:
        self._worker_pid = os.getpid()

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
            self._forwarder = ChildForwarder(send_end, self._failures, self._max_pending)
            self._sink.forward_to(self._forwarder)
        except Exception as exc:  # noqa: BLE001
            self._failures.record("switching a pool child to forwarding", exc)
            return
        if self._on_pool_child_start is not None:
            try:
                self._on_pool_child_start()
            except Exception as exc:  # noqa: BLE001
                self._failures.record("silencing a pool child's exporters", exc)
        if self._relay is not None:
            try:
                self._relay.start_in_child(self._forwarder)
            except Exception as exc:  # noqa: BLE001
                self._failures.record("starting the pool-child relay", exc)

    def _on_child_shutdown(self, **_: Any) -> None:
        """A pool child is exiting: one last send, without ever waiting.

        Nothing here may delay the exit. Billiard runs this hook after the child sent its
        last result but before it tells the main process it is gone; meanwhile the main
        process still counts it as a free pool process and may hand it the next task,
        which is then lost with the child. Blocking work here (a span force-flush over
        HTTP took a few ms) made that race lose a task in about one test run in ten.
        """
        if self._forwarder is not None:
            if self._relay is not None:
                self._relay.final_in_child()
            self._forwarder.final_flush()
