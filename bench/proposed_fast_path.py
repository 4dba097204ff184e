"""A proposed change to the pool-child path, as a monkeypatch the benches can load.

Not part of the package: it exists so the figures in ``README.md`` for the proposal can
be reproduced (``BENCH_EXTRA_IMPORT=proposed_fast_path``, with ``bench/`` on the path,
which both scripts arrange). Same measurements, same attributes, same semantics on
the success and failure paths; three changes:

1. ``_ChildForwarder.flush`` sends when 64 measurements are pending or 1 s has passed
   since the last send, not after every task; after a refused send (the main process
   is behind) it waits for the next threshold instead of re-encoding the same chunk on
   every task. Child exit still sends everything (``final_flush``). What this changes
   for users: a child's counts reach the main process up to 1 s (or 21 tasks) later,
   and an idle child holds its last < 64 measurements until its next task or its exit;
   a SIGKILLed child loses at most that many.
2. Counters are summed per attribute set in the child before sending, so the drain
   makes one ``Counter.add`` per (metric, attributes) per datagram instead of one per
   task (the SDK's ``add``/``record`` cost ~5 us each here).
3. ``task_prerun`` reads the request once (``task.request`` is a thread-local stack
   lookup) and keeps (start, span, task name, queue) for ``task_postrun``, which then
   does not touch the request again.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from otel_celery_metrics import _prefork, _receivers
from otel_celery_metrics import metric_table as mt

_BATCH = 64
_MAX_DELAY = 1.0
_COUNTERS = frozenset(
    i for i, spec in enumerate(mt.METRICS) if spec.kind is mt.InstrumentKind.COUNTER
)
_original_flush = _prefork._ChildForwarder.flush


def _flush(self: Any, flags: int = socket.MSG_DONTWAIT) -> None:
    pending = self._pending
    now = time.monotonic()
    if flags == socket.MSG_DONTWAIT and (
        len(pending) < getattr(self, "_next_at", _BATCH)
        and now - getattr(self, "_last_send", now) < _MAX_DELAY
    ):
        if not hasattr(self, "_last_send"):
            self._last_send = now
        return
    # Sum counters per attribute set; keep histogram points as they are.
    summed: dict[tuple[int, tuple[str, ...]], float] = {}
    points = []
    for measurement in pending:
        if measurement[0] in _COUNTERS and len(measurement) == 3:
            key = (measurement[0], measurement[2])
            summed[key] = summed.get(key, 0) + measurement[1]
        else:
            points.append(measurement)
    points.extend((metric, value, attrs) for (metric, attrs), value in summed.items())
    self._pending = points
    _original_flush(self, flags)
    self._last_send = now
    # Refused (main process behind): try again only once the batch has grown.
    self._next_at = len(self._pending) + _BATCH


_TASKS = _receivers._TASKS
_RUNTIME = _receivers._RUNTIME
_QUEUE_WAIT = _receivers._QUEUE_WAIT


def _on_prerun(self: Any, task_id: Any = None, task: Any = None, **_: Any) -> None:
    try:
        started = self._clock()
        if len(self._started) >= _receivers._MAX_IN_FLIGHT:
            self._started.clear()
        request = task.request
        queue = _receivers.queue_of_request(request, self._default_queue)
        name = task.name
        self._started[task_id] = (started, _receivers._sampled_span(), name, queue)
        reference, wait_from = self._wait_reference(request)
        if reference is not None:
            wait = max(0.0, self._wall_clock() - reference)
            self._sink.emit(_QUEUE_WAIT, wait, (name, queue, wait_from))
    except Exception as exc:  # noqa: BLE001
        self._failures.record("task_prerun receiver", exc)


_original_postrun = _receivers.TaskReceivers.on_postrun


def _on_postrun(
    self: Any, task_id: Any = None, task: Any = None, state: Any = None, **kwargs: Any
) -> None:
    entry = self._started.get(task_id)
    if entry is None or state is None or len(entry) != 4:
        _original_postrun(self, task_id=task_id, task=task, state=state, **kwargs)
        return
    try:
        del self._started[task_id]
        started, span_at_start, name, queue = entry
        runtime = self._clock() - started
        span = _receivers._sampled_span() or span_at_start
        if span is None:
            self._sink.emit(_RUNTIME, runtime, (name, queue))
        else:
            self._sink.emit_traced(_RUNTIME, runtime, (name, queue), span[0], span[1])
        self._sink.emit(_TASKS, 1, (name, queue, str(state)))
    except Exception as exc:  # noqa: BLE001
        self._failures.record("task_postrun receiver", exc)
    finally:
        try:
            self._sink.flush()
        except Exception as exc:  # noqa: BLE001
            self._failures.record("flushing measurements", exc)


_prefork._ChildForwarder.flush = _flush  # type: ignore[method-assign]
_receivers.TaskReceivers.on_prerun = _on_prerun  # type: ignore[method-assign]
_receivers.TaskReceivers.on_postrun = _on_postrun  # type: ignore[method-assign]
