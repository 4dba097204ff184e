"""Our SDK hooks: which metric readers a process gets, decided before the SDK builds them.

Under ``opentelemetry-instrument`` every Python process configures the SDK, and with
``OTEL_METRICS_EXPORTER=prometheus`` opentelemetry-exporter-prometheus' auto reader calls
``prometheus_client.start_http_server`` in its constructor. Two problems follow:

- Processes that are not workers bind the port too: the ``celery multi`` launcher (while
  it starts the nodes that need that port), each node's short-lived ``--detach``
  process, ``celery inspect``/``call``/... :func:`prepare_metrics_exporters` gives them
  no metric reader at all (see ``worker.process_role``), and marks a launcher's environment so
  its nodes each pick their own port (see ``endpoint.server``). Workers and beat get
  our reader (``endpoint.reader``) in place of the auto reader.
- On a busy port the auto reader raises ``OSError: [Errno 98] Address already in use``
  (no port in the message) out of the configurator; ``opentelemetry-instrument`` logs two
  ~25-line tracebacks and abandons the whole auto-instrumentation: no meter provider,
  and no instrumentor at all. Our reader logs one line and retries in the background;
  in other programs :func:`check_prometheus_port` logs one error line naming the address
  and the variable and takes ``prometheus`` out of ``OTEL_METRICS_EXPORTER``, so the SDK
  configures without it and every instrumentation still loads.

This must happen before ``_initialize_components`` imports the exporters, i.e. before our
instrumentor exists. :func:`pre_sdk_init` is shaped for the SDK's only hook at that
point, the ``_opentelemetry_opamp`` / ``pre_sdk_init_function`` entry point, and
:func:`post_sdk_init` for its ``post_sdk_init_function`` (which puts
``OTEL_METRICS_EXPORTER`` back, so processes started later inherit the user's value).
Both also call any other distribution's function registered under their name, since the
SDK calls only the first. Every SDK in the supported range (1.43 and later) calls both; an
older one calls neither, and there every process binds the configured port as upstream does.

Nothing runs at import; the environment is passed in or read only when called.
"""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Any

from otel_celery_metrics.endpoint.exporter_choice import (
    EXPORTER_VARIABLE,
    PROMETHEUS,
    READER_ENTRY_POINT,
    ExporterSwap,
    check_prometheus_port,
    reader_registered,
)
from otel_celery_metrics.endpoint.server import MULTI_MARKER
from otel_celery_metrics.worker.process_role import Role, process_role

_logger = logging.getLogger(__name__)

_HOOK_GROUP = "_opentelemetry_opamp"

_SWAP = ExporterSwap()


def prepare_metrics_exporters(
    environ: MutableMapping[str, str], role: Role, swap: ExporterSwap = _SWAP
) -> None:
    """Decide, before the SDK builds its metric readers, what this process may start.

    - A ``celery multi`` launcher, a ``celery worker --detach`` process about to
      re-execute itself, and short-lived commands (``inspect``, ``call``, ...): no metric
      reader at all (``OTEL_METRICS_EXPORTER=none`` for the SDK). A launcher also marks
      its environment so that its nodes know they are ``celery multi`` nodes.
    - A worker or beat with ``prometheus`` selected: our reader instead of the exporter's
      auto reader (the node's own port; a busy port is retried in the background).
    - A monitor (``celery flower``, ``celery events``) and any other program: the
      busy-port check (:func:`check_prometheus_port`).
    Never raises.
    """
    try:
        if role is Role.MULTI_LAUNCHER:
            environ[MULTI_MARKER] = "1"
        if not role.serves_metrics:
            swap.replace(environ, "none")
        elif role in (Role.OTHER_PROGRAM, Role.MONITOR):
            check_prometheus_port(environ, swap.replace)
        else:
            names = [n.strip() for n in environ.get(EXPORTER_VARIABLE, "").split(",")]
            if PROMETHEUS in names and reader_registered():
                ours = [READER_ENTRY_POINT if n == PROMETHEUS else n for n in names if n]
                swap.replace(environ, ",".join(ours))
    except Exception as exc:  # noqa: BLE001 - never stop a process starting
        _logger.warning("otel-celery-metrics: could not prepare metric exporters: %s", exc)


def pre_sdk_init(resource: Any) -> None:
    """``_opentelemetry_opamp`` ``pre_sdk_init_function`` entry point: runs in
    ``opentelemetry-instrument``'s configurator before exporters are created."""
    from otel_celery_metrics.endpoint.guarded_web import select_guarded_reader
    from otel_celery_metrics.worker.green import patch_gevent_early

    patch_gevent_early()  # before the SDK starts threads: see worker/green.py
    prepare_metrics_exporters(os.environ, process_role())
    # OTEL_CELERY_METRICS_WEB_CONFIG_FILE (TLS, basic auth). Through the swap, so that the
    # processes this one starts inherit the user's OTEL_METRICS_EXPORTER, not our choice.
    select_guarded_reader(os.environ, replace=_SWAP.replace, registered=reader_registered)
    _chain_other_hooks(resource, "pre_sdk_init_function")


def post_sdk_init(resource: Any) -> None:
    """``post_sdk_init_function`` entry point: the SDK is configured; give
    ``OTEL_METRICS_EXPORTER`` back its value for the processes this one starts."""
    restore_metrics_exporters()
    _chain_other_hooks(resource, "post_sdk_init_function")


def restore_metrics_exporters() -> None:
    """Put back what :func:`pre_sdk_init` changed in ``OTEL_METRICS_EXPORTER`` (idempotent).

    Also called by the instrumentor, which ``opentelemetry-instrument`` loads after the SDK
    is configured: if another distribution's post-init function is registered first, the
    SDK never calls ours, and a launcher's nodes would inherit ``none``.
    """
    _SWAP.restore(os.environ)


def _chain_other_hooks(resource: Any, hook_name: str) -> None:
    """The SDK calls only the first function registered under a hook name; call the
    others (an OpAMP client's) so registering ours never shadows theirs."""
    try:
        from importlib.metadata import entry_points

        for entry_point in entry_points(group=_HOOK_GROUP, name=hook_name):
            if entry_point.value.startswith(__name__ + ":"):
                continue
            entry_point.load()(resource)
    except Exception as exc:  # noqa: BLE001
        _logger.warning("otel-celery-metrics: a %s hook failed: %s", hook_name, exc)
