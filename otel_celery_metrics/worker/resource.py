"""The ``celery_worker`` resource detector: one identity per Celery worker, pool included.

Enabled with ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS=celery_worker`` (the SDK loads it
through our ``opentelemetry_resource_detector`` entry point when it builds a provider's
resource, i.e. in ``opentelemetry-instrument``'s sitecustomize, before Celery parses its
command line). In a ``celery worker`` process it adds:

- ``service.instance.id``: one random UUID per worker, created in the worker's main
  process and inherited by every pool child it forks, recycled ones included. The SDK's
  own ``service_instance`` detector makes a new UUID in every forked process, so spans
  exported by pool children would carry one identity per child and churn on every
  recycle; this detector is *process dependent* too, so the SDK re-runs it after each
  fork, after its own, and the worker's id wins. An id set explicitly in
  ``OTEL_RESOURCE_ATTRIBUTES`` is kept (returned as is), so a fork never replaces it.
- ``host.name``: the machine's host name (``socket.gethostname()``).
- ``celery.worker.hostname``: the worker's node name as Celery resolves it
  (``celery@host`` by default), read from the command line: the last ``-n``/``--hostname``
  after ``worker``, else ``CELERY_WORKER_HOSTNAME`` (Celery's click environment
  variable), with Celery's ``%h``/``%n``/``%d`` expansion (:func:`expand_nodename`).

Outside a ``celery worker`` command (a producer, ``celery beat``, a worker started from
code with ``app.worker_main``) it adds nothing. That is deliberate for the instance id:
sharing one id across forked processes is only right where one process exports for the
whole tree, as under our prefork bridge; in, say, a forking web server every process
exports its own cumulative metrics and needs its own id.

This module is an SDK plugin: only the SDK imports it, and so it imports the SDK.
Importing it does nothing else.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource, ResourceDetector

from otel_celery_metrics.worker.process_role import celery_arguments, split_subcommand

SERVICE_INSTANCE_ID = "service.instance.id"
HOST_NAME = "host.name"
CELERY_WORKER_HOSTNAME = "celery.worker.hostname"

#: Celery's click option for the node name reads this variable when ``-n`` is absent
#: (``auto_envvar_prefix="CELERY"`` + subcommand ``worker`` + option ``hostname``).
HOSTNAME_ENV = "CELERY_WORKER_HOSTNAME"

_FORMAT = re.compile(r"%([%\w])")

_lock = threading.Lock()
# The worker's id, created once by the first detection in the main process; forked pool
# children inherit it with the rest of memory, which is what makes it per worker.
_instance_id: str | None = None


def _worker_options(args: Sequence[str]) -> list[str] | None:
    """The arguments after the ``worker`` subcommand, or None for another subcommand."""
    subcommand, options = split_subcommand(args)
    return options if subcommand == "worker" else None


def worker_hostname_option(args: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The raw ``-n``/``--hostname`` value of a ``celery ... worker`` command line.

    Returns None when ``args`` is not a worker command; ``""`` for a worker without one
    (Celery's default, ``celery@<host>``, then applies).
    """
    options = _worker_options(args)
    if options is None:
        return None
    value: str | None = None
    j = 0
    while j < len(options) and options[j] != "--":
        arg = options[j]
        if arg in ("-n", "--hostname") and j + 1 < len(options):
            value = options[j + 1]  # click keeps the last occurrence
            j += 1
        elif arg.startswith("--hostname="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-n") and len(arg) > 2:
            value = arg[2:]
        j += 1
    return environ.get(HOSTNAME_ENV, "") if value is None else value


def expand_nodename(value: str, host: str) -> str:
    """Celery's ``host_format(default_nodename(value))`` for a worker's main process.

    ``name@host`` with ``celery`` as the default name and ``host`` as the default host;
    then ``%h`` -> host, ``%n`` -> host up to the first dot, ``%d`` -> the domain after it,
    ``%i`` -> ``0`` and ``%I`` -> empty (the main process has no pool index), ``%%`` -> ``%``.
    An unknown ``%x`` is left as written (Celery would refuse to start).
    """
    if "@" in value:
        name, _, node_host = value.partition("@")
    else:
        name, node_host = "", value
    nodename = f"{name or 'celery'}@{node_host or host}"
    short, _, domain = host.partition(".")
    keys = {"h": host, "n": short, "d": domain, "i": "0", "I": "", "%": "%"}
    return _FORMAT.sub(lambda m: keys.get(m.group(1), m.group(0)), nodename)


def worker_nodename(
    argv: Sequence[str] | None = None,
    orig_argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    gethostname: Callable[[], str] = socket.gethostname,
) -> str | None:
    """This process' Celery worker node name, or None when it is not a ``celery worker``."""
    args = celery_arguments(
        sys.argv if argv is None else argv,
        getattr(sys, "orig_argv", ()) if orig_argv is None else orig_argv,
    )
    if args is None:
        return None
    raw = worker_hostname_option(args, os.environ if environ is None else environ)
    if raw is None:
        return None
    return expand_nodename(raw, gethostname())


def _worker_instance_id() -> str:
    global _instance_id  # noqa: PLW0603 - the one per-worker value, shared by design
    with _lock:
        if _instance_id is None:
            _instance_id = str(uuid.uuid4())
        return _instance_id


class CeleryWorkerResourceDetector(ResourceDetector):
    """Worker identity for every signal of a Celery worker (see the module docstring)."""

    def __init__(
        self,
        raise_on_error: bool = False,
        argv: Sequence[str] | None = None,
        orig_argv: Sequence[str] | None = None,
        environ: Mapping[str, str] | None = None,
        gethostname: Callable[[], str] = socket.gethostname,
    ) -> None:
        super().__init__(raise_on_error)
        self._argv = argv
        self._orig_argv = orig_argv
        self._environ = environ
        self._gethostname = gethostname

    def is_process_dependent(self) -> bool:
        # True so the SDK re-runs this detector after a fork, after its own
        # service_instance detector: the worker's id then wins in every pool child.
        return True

    def detect(self) -> Resource:
        nodename = worker_nodename(self._argv, self._orig_argv, self._environ, self._gethostname)
        if nodename is None:
            return Resource.get_empty()
        explicit = self._explicit_instance_id()
        return Resource(
            {
                SERVICE_INSTANCE_ID: explicit or _worker_instance_id(),
                HOST_NAME: self._gethostname(),
                CELERY_WORKER_HOSTNAME: nodename,
            }
        )

    def _explicit_instance_id(self) -> str | None:
        environ = os.environ if self._environ is None else self._environ
        text = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
        return _parse_resource_attributes(text).get(SERVICE_INSTANCE_ID) or None


def _parse_resource_attributes(text: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` as the SDK's ``otel`` detector reads it: ``k=v`` pairs,
    comma separated, values percent-decoded."""
    out: dict[str, str] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out
