"""A pool child's end of the prefork socketpair: what it sends to the worker's main process.

The task thread appends measurements, exemplar spans and relayed entries, and sends them
without blocking (``MSG_DONTWAIT``): a task never waits for the main process. Each
datagram is encoded by :mod:`~otel_celery_metrics.pool.codec`;
:class:`~otel_celery_metrics.pool.prefork.ForkBridge` in the main process reads and decodes
them. Split from :mod:`otel_celery_metrics.pool.prefork`,
which creates this object in every pool child.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.pool.codec import EXEMPLAR_ENTRY, ExemplarEntry, encode_datagram
from otel_celery_metrics.recording.admission import AttrValues
from otel_celery_metrics.recording.recorder import Measurement

# Measurements per datagram: keeps each datagram far below the socket's size limit.
_CHUNK = 256
# Bytes per datagram a child sends: relayed points and spans are larger than our own
# measurements, and a datagram must fit the socket's send buffer (about 200 KiB by default).
_MAX_SEND = 60_000
# Seconds a child waits after a refused send before trying again (at its next task).
_RETRY_DELAY = 0.005
_MAX_RETRY_DELAY = 1.0


class ChildForwarder:
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
        self._pending: list[Measurement | ExemplarEntry | tuple[int, Any]] = []
        self._dropped = 0
        # After a refused send, the task thread does not try again before this time:
        # re-encoding a growing backlog after every task is what a busy main process would
        # otherwise make tasks pay. The retry thread covers the gap.
        self._retry_at = 0.0
        self._retrier: threading.Thread | None = None

    def emit(self, metric: int, value: float, attrs: AttrValues) -> None:
        with self._lock:
            self._pending.append((metric, value, attrs))

    def span(self, task_id: str, trace_id: int, span_id: int) -> None:
        with self._lock:
            self._pending.append((EXEMPLAR_ENTRY, task_id, trace_id, span_id))

    def extend(self, entries: list[Any]) -> None:
        """Queue entries of the pool-child relay (sent with the next flush), bounded."""
        with self._lock:
            self._pending.extend(entries)
            self._trim()

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

        One sender at a time: if another thread (retry, relay) is mid-send, the caller
        does not wait (that thread sends what the caller added), unless ``wait`` > 0: the
        final flush waits that long for it, because after it the process is gone.
        """
        acquired = (self._send_lock.acquire(timeout=wait) if wait > 0
                    else self._send_lock.acquire(blocking=False))
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
                size = min(_CHUNK, len(pending) - sent)
                while True:
                    chunk = pending[sent : sent + size]
                    data = encode_datagram(dropped, chunk)
                    if len(data) <= _MAX_SEND or size == 1:
                        break
                    size //= 2
                if len(data) > _MAX_SEND:
                    self._failures.record(
                        "sending to the worker's main process",
                        ValueError(f"an entry of {len(data)} bytes is too large; dropped"),
                    )
                    sent += 1
                    continue
                self._sock.send(data, flags)
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

    def final_flush(self) -> None:
        """Send what is left, once, without waiting (child exit: see ForkBridge).

        Another thread's send in progress (non-blocking too, so microseconds) is the one
        thing waited for, at most 50 ms: what it took is not what is left.
        """
        try:
            if not self._send_pending(socket.MSG_DONTWAIT, wait=0.05) or self._pending:
                with self._lock:
                    lost = len(self._pending)
                self._failures.record(
                    "final flush of a pool child",
                    BlockingIOError(f"{lost} entries not sent: the socket was full"),
                )
        except Exception as exc:  # noqa: BLE001
            self._failures.record("final flush of a pool child", exc)
