"""Task outcomes from Celery's own request callbacks, in the process that owns the request.

Why not the task signals: under the prefork pool, ``task_prerun``/``task_postrun`` fire
in the pool children, so a signal-based design must ship every measurement from each
child to the worker's main process and pay Celery's signal dispatch in every task. But
the main process already learns everything it needs, without any help from the child:
for every execution, the pool hands the result tuple ``(failed, retval, runtime)`` back
to the main process' :class:`celery.worker.request.Request` (``on_success``), the
moment a child starts a task is reported to ``on_accepted``, and a lost child, a hard
time limit or a termination arrives at ``on_failure``/``on_timeout``. Recording there
costs the task nothing at all, loses nothing when a child is recycled or killed, and is
the same code for every pool: solo and threads call the same callbacks in-process.

:class:`RequestHooks` makes Celery's worker build its per-task request classes
(``celery.worker.strategy.create_request_cls``) as subclasses whose callbacks first call
:class:`TaskOutcomes`, and can tell at worker start whether the worker built them
(:meth:`RequestHooks.problem`). Nothing here knows which process it runs in.

Tasks run outside a worker (``task.apply()``, eager mode) have no request and are not
counted: these are worker metrics.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.core import queue_wait, values
from otel_celery_metrics.core.queue_wait import PUBLISHED_AT_HEADER, RECEIVED_AT_FIELD
from otel_celery_metrics.core.routing import (
    DELIVERED_FROM,
    delivered_queue,
    fallback_queue,
)
from otel_celery_metrics.core.safety import FailureLog
from otel_celery_metrics.recording.recorder import SpanIds
from otel_celery_metrics.recording.sinks import TaskRecording
from otel_celery_metrics.worker.consume_hook import ConsumeHook
from otel_celery_metrics.worker.patching import Wrapping

_logger = logging.getLogger(__name__)

_TASKS = mt.METRIC_INDEX[mt.TASKS.name]
_FAILURES = mt.METRIC_INDEX[mt.TASK_FAILURES.name]
_DROPPED = mt.METRIC_INDEX[mt.SELF_DROPPED.name]

# Bound on remembered task ids (failures being reported, failures already counted,
# exemplar spans waiting for their outcome): protection against sequences we did not
# foresee, never reached in normal operation.
_MAX_REMEMBERED = 10_000


#: How each queue-wait reference is named in a refusal's log line.
_REFERENCE_NAMES = {
    "publish": "publish time header", "received": "receipt time", "eta": "ETA",
}


def wait_reference(
    fields: dict[str, Any], eta: Any, refused: Callable[[values.Refusal], None]
) -> tuple[float | None, str]:
    """When a task's wait for execution started, and from what (:mod:`~.core.queue_wait`).

    Each time is checked first (:mod:`~.core.values`): one that is not a finite time is
    handed to ``refused`` and treated as absent (a bad publish header: the wait counts
    from receipt).
    """

    def checked(value: object) -> float | None:
        if isinstance(value, values.Refusal):
            refused(value)
            return None
        return value  # type: ignore[return-value]

    return queue_wait.wait_reference(
        checked(values.timestamp(fields.get(PUBLISHED_AT_HEADER))),
        checked(values.timestamp(fields.get(RECEIVED_AT_FIELD))),
        checked(values.eta(eta) if eta else None),
    )


def refusal_log(recorder: TaskRecording, logger: logging.Logger) -> values.RefusalLog:
    """Refused numbers (:mod:`~.core.values`) counted in the dropped self-metric."""
    return values.RefusalLog(
        lambda reason: recorder.emit(_DROPPED, 1, (reason,)), logger,
        mt.SELF_DROPPED.prometheus_name + '{{reason="{reason}"}}',
    )


class SpanJoin:
    """Exemplar spans by task id, waiting for the task's outcome (bounded)."""

    def __init__(self, limit: int = _MAX_REMEMBERED) -> None:
        self._spans: OrderedDict[str, SpanIds] = OrderedDict()
        self._lock = threading.Lock()
        self._limit = limit

    def reinit_locks(self) -> None:
        """A new lock, in a forked child (see ``Recorder.reinit_locks``)."""
        self._lock = threading.Lock()

    def put(self, task_id: str, span: SpanIds) -> None:
        with self._lock:
            self._spans[task_id] = span
            if len(self._spans) > self._limit:
                self._spans.popitem(last=False)

    def take(self, task_id: str) -> SpanIds | None:
        if not self._spans:
            return None
        with self._lock:
            return self._spans.pop(task_id, None)


def _exception_name(exc: Any) -> str:
    # An exception Celery could not pickle comes back wrapped, carrying its class name.
    wrapped = getattr(exc, "exc_cls_name", None)
    if isinstance(wrapped, str) and wrapped:
        return wrapped
    return type(exc).__name__


class TaskOutcomes:
    """Turns request callbacks (and main-process task_failure signals) into measurements."""

    def __init__(
        self,
        recorder: TaskRecording,
        failures: FailureLog,
        default_queue: str = "unknown",
        take_span: Callable[[str], SpanIds | None] | None = None,
        wall_clock: Callable[[], float] = time.time,
        *,
        bounds: values.Bounds | None = None,
    ) -> None:
        """``bounds``: the plausible range of queue waits and runtimes (see
        :mod:`otel_celery_metrics.core.values`); values outside it are refused."""
        self._recorder = recorder
        self._bounds = bounds or values.Bounds()
        self._refusals = refusal_log(recorder, _logger)
        self._failures = failures
        self._default_queue = default_queue
        self._wall_clock = wall_clock
        self._spans_from = take_span
        # Where the span a task ran in comes from (exemplars): None until they are enabled.
        self._take_span: Callable[[str], SpanIds | None] | None = None
        # Ids of requests whose failure Celery is reporting from this process right now
        # (a lost pool child, a hard time limit): the task_failure signal for them counts.
        self._reporting: dict[str, tuple[str, str, Any]] = {}
        # Celery 5.7 reports a hard time limit twice (on_timeout and the pool's error
        # callback both send task_failure): count each task once.
        self._counted: OrderedDict[str, None] = OrderedDict()
        from billiard.einfo import ExceptionWithTraceback
        from celery.exceptions import Ignore, Reject, Retry  # Celery is an extra

        self._retry, self._ignore, self._reject = Retry, Ignore, Reject
        self._wrapped = ExceptionWithTraceback
        self._warned_unstamped = False

    def enable_exemplars(self) -> None:
        """Look up the span each task ran in (``take_span``) when recording its outcome."""
        self._take_span = self._spans_from

    # -- where a request's task name and queue come from --------------------------------------

    def _name_queue(self, request: Any) -> tuple[str, str]:
        queue = delivered_queue(request.delivery_info, self._default_queue)
        return request.task.name, queue

    def _delivered_from(self, request: Any) -> str:
        """The queue ``request``'s message was consumed from (:mod:`~.core.routing`)."""
        info = request.message.delivery_info
        queue = info.get(DELIVERED_FROM) if info.__class__ is dict else None
        if queue:
            return str(queue)
        # The worker started consuming before instrumentation wrapped its consumers.
        queue = fallback_queue(
            info, request.task.app.amqp.queues.consume_from, self._default_queue
        )
        if not self._warned_unstamped:
            self._warned_unstamped = True
            _logger.error(
                "otel-celery-metrics: a message arrived through a queue consumer started "
                "before instrumentation; its queue label is %r (the routing key only when "
                "it names a queue this worker consumes, else the default queue). "
                "Instrument before the worker starts consuming.",
                queue,
            )
        return queue

    # -- request callbacks ----------------------------------------------------------------------

    def received(self, request: Any, name: str) -> None:
        """The worker took a message of task ``name`` from the broker (a request is built
        for every one, including those then discarded as revoked or expired)."""
        try:
            fields = request.request_dict
            # The queue-wait reference when the producer is not instrumented.
            fields[RECEIVED_AT_FIELD] = self._wall_clock()
            queue = self._delivered_from(request)
            # Celery's request keeps only exchange and routing key of the delivery; the
            # queue goes with them, for every later callback and the worker state.
            request.delivery_info[DELIVERED_FROM] = queue
            self._recorder.task_received(name, queue)
        except Exception as exc:  # noqa: BLE001 - metrics never break a worker
            self._failures.record("counting a received task", exc)

    def finished(self, request: Any, failed__retval__runtime: Any, name: str) -> None:
        """The task ``name`` ran to an end in its pool process (``Request.on_success``).

        The per-task hot path in the worker's main process: the common case (a success,
        no ETA) is written inline; everything rarer goes through helper methods.
        """
        try:
            failed, retval, runtime = failed__retval__runtime
            delivery_info = request.delivery_info
            queue = delivery_info.get(DELIVERED_FROM) if delivery_info.__class__ is dict else None
            if not queue:
                queue = self._default_queue
            state = "SUCCESS"
            if failed:
                outcome = self._failed_state(name, queue, retval)
                if outcome is None:
                    return  # the pool process exited; Celery reports it as a lost worker
                state = outcome
            started = request.time_start
            if runtime.__class__ is not float:
                # Celery times successful executions only (with a monotonic clock). For
                # the other outcomes: from the pool process accepting the task to its
                # result reaching us (the pool's hand-over adds well under a millisecond).
                runtime = self._elapsed(started, name)
            wait = None
            if started is not None:
                # Inline for the usual message (no ETA, a float reference in range);
                # _wait() else (and for every value values.queue_wait refuses).
                fields = request.request_dict
                wait_from = "publish"
                reference = fields.get(PUBLISHED_AT_HEADER)
                if reference is None:
                    wait_from = "received"
                    reference = fields.get(RECEIVED_AT_FIELD)
                seconds = (
                    values.queue_wait(started, reference, self._bounds)
                    if not request.eta else None
                )
                if seconds.__class__ is float:
                    wait = (wait_from, seconds)
                else:
                    wait = self._wait(request, name)
            take_span = self._take_span
            span = take_span(request.id) if take_span is not None else None
            self._recorder.task_ended(name, str(queue), state, runtime, span=span, wait=wait)
        except Exception as exc:  # noqa: BLE001 - metrics never break a worker
            self._failures.record("recording a task's outcome", exc)


    def _failed_state(self, name: str, queue: str, retval: Any) -> str | None:
        """The terminal state of an execution that raised; counts failures by class."""
        exc = retval.exception
        if isinstance(exc, self._wrapped):
            exc = exc.exc
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            return None
        if isinstance(exc, self._retry):
            return "RETRY"
        if isinstance(exc, self._ignore):
            return "IGNORED"
        if isinstance(exc, self._reject):
            if not exc.requeue:
                # Celery records this as a failure and sends task_failure for it.
                self._recorder.emit(_FAILURES, 1, (name, queue, "Reject"))
            return "REJECTED"
        self._recorder.emit(_FAILURES, 1, (name, queue, _exception_name(exc)))
        return "FAILURE"

    def _elapsed(self, started: float | None, name: str) -> float | None:
        if not started:
            return None
        checked = values.elapsed(started, self._wall_clock(), self._bounds)
        if isinstance(checked, values.Refusal):
            self._refusals.refused(checked, name, "runtime")
            return None
        return checked

    def _wait(self, request: Any, name: str) -> tuple[str, float] | None:
        """(wait_from, seconds) the task waited before a pool process accepted it.

        Recorded together with the task's outcome (one call, one lock per task): Celery
        stamps the acceptance time on the request (``time_start``) and it stays there.
        Producer and worker clocks can disagree: a small negative wait is skew, not time
        travel, and counts as 0; beyond the tolerance, or past the maximum wait, the
        wait is refused and counted (:func:`values.queue_wait`).
        """
        started = request.time_start
        if started is None:
            return None

        def refused(refusal: values.Refusal) -> None:
            self._refusals.refused(refusal, name, "queue wait")

        reference, wait_from = wait_reference(request.request_dict, request.eta, refused)
        if reference is None:
            return None
        seconds = values.queue_wait(started, reference, self._bounds, _REFERENCE_NAMES[wait_from])
        if isinstance(seconds, values.Refusal):
            refused(seconds)
            return None
        return wait_from, seconds

    def reporting_failure(self, request: Any) -> None:
        """Celery is about to report a failure for ``request`` from this process (a lost
        pool child, a hard time limit): a task_failure signal now is that task's end."""
        try:
            if len(self._reporting) < _MAX_REMEMBERED:
                # The wait is computed when the failure is counted, once per task.
                self._reporting[request.id] = (*self._name_queue(request), request)
        except Exception as exc:  # noqa: BLE001
            self._failures.record("noting a failure being reported", exc)

    def reported(self, request: Any) -> None:
        self._reporting.pop(getattr(request, "id", None), None)  # type: ignore[arg-type]

    def on_failure_signal(self, task_id: Any = None, exception: Any = None, **_: Any) -> None:
        """``task_failure`` receiver: counts only failures Celery reports for a request
        in this process (see :meth:`reporting_failure`). Failures raised by the task
        itself are counted in :meth:`finished`, from the result the pool hands back."""
        try:
            noted = self._reporting.get(task_id)
            if noted is None or task_id in self._counted:
                return
            self._counted[task_id] = None
            if len(self._counted) > _MAX_REMEMBERED:
                self._counted.popitem(last=False)
            name, queue, request = noted
            wait = self._wait(request, name)
            self._recorder.emit(_FAILURES, 1, (name, queue, _exception_name(exception)))
            self._recorder.task_ended(name, queue, "FAILURE", None, wait=wait)
        except Exception as exc:  # noqa: BLE001
            self._failures.record("task_failure receiver", exc)


def instrumented_request_class(base: type, outcomes: TaskOutcomes, task_name: str) -> type:
    """A subclass of Celery's per-task request class whose callbacks tell ``outcomes``.

    Our code runs before Celery's in ``on_success`` (Celery may re-raise a child's exit
    there). Every
    ``outcomes`` method catches its own errors: a request callback never fails because
    of metrics.
    """
    base_init = base.__init__  # type: ignore[misc]
    base_success = base.on_success  # type: ignore[attr-defined]
    base_failure = base.on_failure  # type: ignore[attr-defined]
    base_timeout = base.on_timeout  # type: ignore[attr-defined]
    finished, received = outcomes.finished, outcomes.received

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        base_init(self, *args, **kwargs)
        received(self, task_name)

    # Celery builds one request class per registered task, so the name is fixed here
    # (the task's registered name, not a message's shadow name: bounded by the registry).
    def on_success(self: Any, failed__retval__runtime: Any, **kwargs: Any) -> Any:
        finished(self, failed__retval__runtime, task_name)
        return base_success(self, failed__retval__runtime, **kwargs)

    # on_failure/on_timeout pass whatever Celery gives through untouched: a keyword a later
    # Celery adds must not raise inside the worker's result handler. We only read the
    # argument that decides whether the call reports a task's end.
    def on_failure(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Celery: on_failure(exc_info, send_failed_event=True, return_ok=False)
        return_ok = kwargs.get("return_ok", args[2] if len(args) > 2 else False)
        if return_ok:  # from on_success: the outcome was recorded there
            return base_failure(self, *args, **kwargs)
        outcomes.reporting_failure(self)
        try:
            return base_failure(self, *args, **kwargs)
        finally:
            outcomes.reported(self)

    def on_timeout(self: Any, *args: Any, **kwargs: Any) -> Any:
        # Celery: on_timeout(soft, timeout)
        soft = kwargs.get("soft", args[0] if args else False)
        if soft:
            return base_timeout(self, *args, **kwargs)
        outcomes.reporting_failure(self)
        try:
            return base_timeout(self, *args, **kwargs)
        finally:
            outcomes.reported(self)

    namespace = {
        "__init__": __init__,
        "on_success": on_success,
        "on_failure": on_failure,
        "on_timeout": on_timeout,
        "__module__": base.__module__,
        "__doc__": base.__doc__,
    }
    return type(base.__name__, (base,), namespace)


class RequestHooks:
    """Makes the worker build instrumented request classes, and its queue consumers say
    which queue each message came from (``consume``); undone by :meth:`uninstall`."""

    def __init__(self, outcomes: TaskOutcomes, consume: ConsumeHook | None = None) -> None:
        self._outcomes = outcomes
        self._consume = consume if consume is not None else ConsumeHook()
        self._wrapping = Wrapping("celery.worker.strategy.create_request_cls")
        # Request classes built through our hook, and the last one we could not subclass.
        self._built = 0
        self._failed: str | None = None

    def problem(self) -> str | None:
        """Why the request classes the worker built are not ours, or None.

        Asked at worker start, after the worker built every task's strategy: a Celery that
        builds requests another way never calls the hook.
        """
        if self._failed is not None:
            return self._failed
        if self._built == 0:
            return (
                "the worker built its task strategies without calling "
                "celery.worker.strategy.create_request_cls (no task outcome is counted)"
            )
        return None

    def install(self) -> None:
        from celery.worker import strategy

        if self._wrapping.installed:
            return
        self._consume.install()
        outcomes = self._outcomes
        wrapping = self._wrapping

        def make(original: Callable[..., type]) -> Callable[..., type]:
            def create_request_cls(base: Any, task: Any, *args: Any, **kwargs: Any) -> type:
                cls: type = original(base, task, *args, **kwargs)
                if not wrapping.active:
                    return cls
                try:
                    instrumented = instrumented_request_class(cls, outcomes, str(task.name))
                except Exception as exc:  # noqa: BLE001 - an unexpected class stays as it is
                    self._failed = f"cannot subclass {cls!r}: {type(exc).__name__}: {exc}"
                    return cls
                self._built += 1
                return instrumented

            return create_request_cls

        wrapping.install(strategy, "create_request_cls", make)

    def uninstall(self) -> None:
        self._wrapping.restore()
        self._consume.uninstall()
