"""Green pools (``-P gevent``, ``-P eventlet``): patch early enough, or say loudly that it was not.

Why this exists: a green pool needs the standard library monkey-patched before anything
starts a thread or takes a lock it will share with the pool's greenlets. Celery patches in
``celery``'s ``main()`` (``celery.maybe_patch_concurrency``), but under
``opentelemetry-instrument`` the SDK has started its threads long before that: the
Prometheus HTTP server and the periodic OTLP exporter run as real OS threads that then call
into greenlet-patched code ("Cannot switch to a different thread"), and ``/metrics`` stops
answering. OpenTelemetry's documented answer is
``OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH=patch_all``.

What this module does:

- :func:`patch_gevent_early` runs from our pre-SDK hook
  (:mod:`otel_celery_metrics.endpoint.sdk_hooks`),
  before the SDK builds its exporters and readers. When the command is a Celery worker whose
  pool is gevent -- decided by Celery's own rule, ``-P gevent``, ``--pool gevent`` or
  ``--pool=gevent`` on the command line -- it applies gevent's ``patch_all()``, the same call
  Celery makes a moment later anyway. Any other pool, any other program, or our
  instrumentor disabled (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=celery_metrics``): nothing
  happens.
- :func:`check_green_pool` runs when the instrumentor is installed. If the pool is green and
  its patching is still missing at that point -- so OpenTelemetry's threads are real threads
  -- it logs one ERROR line naming what to do and returns the reason that the
  ``otel_celery_metrics_degraded`` self-metric reports. Under gevent that happens when our
  hook was not called (another distribution's ``pre_sdk_init_function`` came first). Under
  eventlet it always happens with ``opentelemetry-instrument``: patching eventlet that early
  hangs the worker at start, and without it the worker stalls after a few tasks, with or
  without this package (``docs/configuration.md``, "Pools"). ``setup_metrics()`` called
  from ``celeryd_init`` runs after Celery patched, and passes this check for both pools.

Nothing runs at import; ``argv`` and the environment are passed in or read only when
called.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from otel_celery_metrics.core import metric_table as mt

# Self-metric names in log lines come from the one table.
_DEGRADED_SERIES = mt.SELF_DEGRADED.prometheus_name
_logger = logging.getLogger(__name__)

GEVENT_PATCH_VARIABLE = "OTEL_PYTHON_AUTO_INSTRUMENTATION_EXPERIMENTAL_GEVENT_PATCH"
DISABLED_VARIABLE = "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"
#: Our entry point's name (pyproject.toml), as users list it in DISABLED_VARIABLE.
INSTRUMENTOR_NAME = "celery_metrics"
#: ``reason`` values of ``otel_celery_metrics_degraded`` (metric_table.DEGRADED_REASONS).
GEVENT_NOT_PATCHED = "gevent_not_patched"
EVENTLET_NOT_PATCHED = "eventlet_not_patched"


def worker_pool(argv: Sequence[str], orig_argv: Sequence[str] = ()) -> str | None:
    """The pool a ``celery ... worker`` command line asks for, read as Celery reads it.

    Celery's ``maybe_patch_concurrency`` looks for ``-P NAME``, ``--pool NAME`` and
    ``--pool=NAME`` and skips ``celery multi``. None for another program, another
    subcommand, or no pool option (Celery then uses prefork, or ``worker_pool`` from the
    app's configuration, which Celery does not patch for either). ``orig_argv`` is
    :data:`sys.orig_argv`: under ``python -m celery``, while ``sitecustomize`` runs,
    ``argv[0]`` is just ``-m``.
    """
    if not argv or "multi" in argv or "worker" not in argv:
        return None
    program = argv[0].replace("\\", "/")
    by_name = os.path.basename(program) == "celery" or program.endswith("celery/__main__.py")
    as_module = program == "-m" and _runs_module(orig_argv, "celery")
    if not (by_name or as_module):
        return None
    for i, arg in enumerate(argv):
        if arg.startswith("--pool"):
            name, sep, value = arg.partition("=")
            if name == "--pool":
                return value if sep else _next(argv, i)
        elif arg == "-P":
            return _next(argv, i)
    return None


def _runs_module(orig_argv: Sequence[str], module: str) -> bool:
    args = list(orig_argv)
    return any(arg == "-m" and args[i + 1 : i + 2] == [module] for i, arg in enumerate(args))


def _next(argv: Sequence[str], i: int) -> str | None:
    return argv[i + 1] if i + 1 < len(argv) else None


def _command_line(argv: Sequence[str] | None) -> tuple[Sequence[str], Sequence[str]]:
    if argv is not None:
        return argv, ()
    return sys.argv, getattr(sys, "orig_argv", ())


def gevent_patched() -> bool:
    """True when gevent has patched ``threading`` (the patch a green pool depends on)."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("threading"))


def patch_gevent_early(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> bool:
    """Apply gevent's ``patch_all()`` now if this is a ``-P gevent`` Celery worker.

    Not when our instrumentor is disabled (``celery_metrics`` in
    ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``): turning us off turns this off too.
    Returns True if it patched. Never raises: without gevent installed Celery fails to
    start the pool with its own clear error.
    """
    try:
        environ = os.environ if environ is None else environ
        disabled = environ.get(DISABLED_VARIABLE, "").replace(" ", "").split(",")
        pool = worker_pool(*_command_line(argv))
        if pool != "gevent" or gevent_patched() or INSTRUMENTOR_NAME in disabled:
            return False
        from gevent import monkey

        monkey.patch_all()
        _logger.info(
            "otel-celery-metrics: -P gevent: applied gevent's monkey patching before "
            "OpenTelemetry starts its threads (what %s=patch_all does)", GEVENT_PATCH_VARIABLE,
        )
        return True
    except Exception as exc:  # noqa: BLE001 - check_green_pool reports the consequence
        _logger.warning("otel-celery-metrics: could not apply gevent's patching: %s", exc)
        return False


def eventlet_patched() -> bool:
    """True when eventlet has patched ``thread`` (Celery's ``eventlet.monkey_patch()``)."""
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher is not None and patcher.is_monkey_patched("thread"))


def check_green_pool(argv: Sequence[str] | None = None) -> str | None:
    """The degraded reason for this worker's pool (logged once as an ERROR), or None."""
    pool = worker_pool(*_command_line(argv))
    if pool == "gevent" and not gevent_patched():
        _logger.error(
            "otel-celery-metrics: -P gevent, but gevent's monkey patching was not applied "
            "before OpenTelemetry started its threads: /metrics and OTLP export hang or miss "
            "tasks. Set %s=patch_all (docs/configuration.md, \"Pools\"); "
            "%s{reason=\"%s\"} is 1",
            GEVENT_PATCH_VARIABLE, _DEGRADED_SERIES, GEVENT_NOT_PATCHED,
        )
        return GEVENT_NOT_PATCHED
    if pool == "eventlet" and not eventlet_patched():
        _logger.error(
            "otel-celery-metrics: -P eventlet under opentelemetry-instrument is not supported: "
            "OpenTelemetry starts its threads before Celery applies eventlet's patching, and "
            "the worker stalls with /metrics unanswered. Use -P gevent with %s=patch_all, or "
            "set up metrics in code with setup_metrics() from a celeryd_init receiver "
            "(docs/configuration.md, \"Pools\"); %s{reason=\"%s\"} is 1",
            GEVENT_PATCH_VARIABLE, _DEGRADED_SERIES, EVENTLET_NOT_PATCHED,
        )
        return EVENTLET_NOT_PATCHED
    return None
