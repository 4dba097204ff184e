"""The Celery application the integration tests run real workers on.

The broker comes from TEST_BROKER_URL. Tasks cover every terminal state.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import signal
import sys
import time

from celery import Celery
from celery.exceptions import Ignore, Reject

app = Celery("tasks_app", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15"))
app.conf.update(
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue=os.environ.get("TEST_QUEUE", "celery"),
    # SQS tests: region, polling and queue_name_prefix (tests.support.TRANSPORT_OPTIONS_ENV).
    broker_transport_options=json.loads(os.environ.get("TEST_BROKER_TRANSPORT_OPTIONS") or "{}"),
)
if os.environ.get("TEST_CELERY_CONF"):
    # A JSON object of settings, for the fault and failover tests (Sentinel's master_name,
    # kombu's health-check intervals in broker_transport_options).
    app.conf.update(json.loads(os.environ["TEST_CELERY_CONF"]))


# Diagnostics for rare hangs: SIGUSR2 makes a worker process write the stack of every
# thread to stderr, which tests.support.Worker keeps in the worker log. Registered at
# import, in the main process; pool children inherit the handler and the real stderr
# descriptor with the fork (their sys.stderr is Celery's logging proxy, which has none).
# (SIGUSR1 is Celery's own traceback dump, main process only.)
with contextlib.suppress(Exception):  # imported where stderr has no descriptor: no dumps
    faulthandler.register(signal.SIGUSR2, all_threads=True)


def _dump_greenlets(_signum: int, _frame: object) -> None:
    """Under gevent every greenlet runs on one thread, whose dump shows only the hub: dump
    every greenlet's stack, then the threads (how the issue-15 hang was found)."""
    from gevent.util import format_run_info

    os.write(2, ("\n".join(format_run_info()) + "\n").encode(errors="replace"))
    # Last: tests.support.Worker.thread_stacks waits for its "Current thread" line.
    faulthandler.dump_traceback(2, all_threads=True)


_monkey = sys.modules.get("gevent.monkey")
if _monkey is not None and _monkey.is_module_patched("threading"):
    with contextlib.suppress(Exception):
        signal.signal(signal.SIGUSR2, _dump_greenlets)


@app.task(name="tests.ok")
def ok(x: int = 0) -> int:
    return x


@app.task(name="tests.fail")
def fail() -> None:
    raise ValueError("boom: secret argument must not become a label")


@app.task(name="tests.flaky", bind=True, max_retries=5)
def flaky(self, retries_wanted: int = 1) -> str:  # type: ignore[no-untyped-def]
    if self.request.retries < retries_wanted:
        raise self.retry(countdown=0)
    return "done"


@app.task(name="tests.ignored")
def ignored() -> None:
    raise Ignore()


@app.task(name="tests.rejected")
def rejected() -> None:
    raise Reject("not for us", requeue=False)


@app.task(name="tests.sleep")
def sleep(seconds: float) -> None:
    time.sleep(seconds)


@app.task(name="tests.overrun")
def overrun(seconds: float) -> None:
    """Runs ``seconds`` whatever its soft time limit: catches SoftTimeLimitExceeded and goes
    on, as a task that cleans up slowly does (past_soft_time_limit counts it)."""
    from celery.exceptions import SoftTimeLimitExceeded

    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(SoftTimeLimitExceeded):
            time.sleep(left)


@app.task(name="tests.die")
def die() -> None:
    """Kills its own pool process, as the OOM killer would."""
    os.kill(os.getpid(), signal.SIGKILL)


# Application metrics made with the OpenTelemetry API, as docs/custom-metrics.md shows:
# instruments created at import (in the main process, before the pool forks), recorded
# inside tasks (in pool children). The pool-child relay brings them to the one endpoint.
def _billing_instruments():  # type: ignore[no-untyped-def]
    from opentelemetry import metrics

    meter = metrics.get_meter("billing")
    return (
        meter.create_counter("billing.invoices", unit="{invoice}",
                             description="Invoices issued"),
        meter.create_histogram("billing.amount", unit="EUR", description="Invoice amounts",
                               explicit_bucket_boundaries_advisory=[10.0, 100.0, 1000.0]),
    )


_INVOICES, _AMOUNT = _billing_instruments()


@app.task(name="tests.invoice")
def invoice(plan: str, amount: float) -> None:
    _INVOICES.add(1, {"plan": plan})
    _AMOUNT.record(amount, {"plan": plan})


@app.task(name="tests.invoice_then_sleep")
def invoice_then_sleep(plan: str, amount: float, seconds: float) -> None:
    invoice(plan, amount)
    time.sleep(seconds)
_APP_CALLS: list[object] = []


@app.task(name="tests.app_metric")
def app_metric(kind: str = "a") -> None:
    """Records an application metric with the OpenTelemetry API, as a user's task would."""
    from opentelemetry import metrics

    if not _APP_CALLS:  # created on first use: the meter provider exists by then
        _APP_CALLS.append(metrics.get_meter("tests.app").create_counter("tests.app.calls"))
    _APP_CALLS[0].add(1, {"kind": kind})  # type: ignore[attr-defined]
