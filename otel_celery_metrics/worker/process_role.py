"""Which Celery process this is, read from its command line, and whether it serves metrics.

``opentelemetry-instrument`` configures the SDK in *every* Python process it starts, and
its PYTHONPATH reaches every process those start. Under ``celery multi`` that is the
launcher (``celery multi start ...``), one short-lived "detaching" process per node
(``python -m celery worker --detach ...``, which re-executes itself as the node without
``--detach``), and the nodes themselves; ``celery inspect``, ``call`` and friends are
instrumented too. Only a worker, beat or a monitor (``celery flower``, ``celery events``)
lives long enough to be scraped or to export; anything else that binds the Prometheus port
takes it from the node that needs it.

:func:`process_role` classifies a process from ``sys.argv`` as it is at sitecustomize
time, before Celery parses it (``['-m', ...]`` for ``python -m celery``, the module name
then only in ``sys.orig_argv``). Pure functions of their arguments; nothing at import.
"""

from __future__ import annotations

import enum
import os
import sys
from collections.abc import Sequence

# Celery's top-level options that take a value, so the word after them is not mistaken
# for the subcommand (``celery -A worker worker`` names an app "worker").
GLOBAL_OPTIONS_WITH_VALUE = frozenset(
    {"-A", "--app", "-b", "--broker", "--result-backend", "--loader", "--config", "--workdir"}
)
_DETACH_FLAGS = frozenset({"--detach", "-D"})


class Role(enum.Enum):
    """What a process is, as far as serving or exporting metrics goes."""

    #: Not the Celery command line (a web app, a script, ``app.worker_main()``): left alone.
    OTHER_PROGRAM = "other program"
    #: ``celery worker``: serves ``/metrics`` or exports.
    WORKER = "worker"
    #: ``celery beat``: serves or exports (it publishes tasks).
    BEAT = "beat"
    #: ``celery worker --detach``: re-executes itself as the worker within a second; the
    #: worker it becomes serves, this one must not hold the port meanwhile.
    DETACHING_WORKER = "detaching worker"
    #: ``celery flower`` or ``celery events``: long-running, records no task outcomes of
    #: its own; configured like any other program (its own port, checked before binding).
    MONITOR = "monitor"
    #: ``celery multi``: starts, stops and restarts nodes, then exits.
    MULTI_LAUNCHER = "celery multi"
    #: Any other subcommand (inspect, control, call, purge, status, result, shell, ...).
    SHORT_LIVED_COMMAND = "short-lived celery command"

    @property
    def serves_metrics(self) -> bool:
        """Whether this process may start a metrics endpoint or a periodic exporter."""
        return self in (Role.OTHER_PROGRAM, Role.WORKER, Role.BEAT, Role.MONITOR)


#: Subcommands whose role their options do not change. ``beat --detach`` forks in-process
#: (no re-exec): the daemon is this process. ``flower`` and ``events`` watch the cluster
#: for as long as they run (Flower registers itself as a subcommand).
_BY_SUBCOMMAND = {
    "beat": Role.BEAT,
    "multi": Role.MULTI_LAUNCHER,
    "flower": Role.MONITOR,
    "events": Role.MONITOR,
}


def celery_arguments(argv: Sequence[str], orig_argv: Sequence[str] = ()) -> list[str] | None:
    """The arguments after ``celery`` when this process runs the Celery CLI, else None.

    At sitecustomize time ``sys.argv`` is ``['/path/celery', ...]`` for the console
    script but ``['-m', ...]`` for ``python -m celery`` (the module name is only in
    ``sys.orig_argv`` until runpy fills it in).
    """
    if not argv:
        return None
    first = argv[0]
    if first == "-m":
        orig = list(orig_argv)
        if "-m" in orig and orig.index("-m") + 1 < len(orig):
            module = orig[orig.index("-m") + 1]
            return list(argv[1:]) if module == "celery" else None
        return None
    base = os.path.basename(first)
    if base in ("celery", "celery.exe", "celery-script.py") or first.endswith(
        os.path.join("celery", "__main__.py")
    ):
        return list(argv[1:])
    return None


def split_subcommand(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """(subcommand, its arguments) of the arguments after ``celery``; (None, []) if none."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in GLOBAL_OPTIONS_WITH_VALUE:
            i += 2
        elif arg.startswith("-") and arg != "--":
            i += 1
        elif arg == "--":
            return None, []
        else:
            return arg, list(args[i + 1 :])
    return None, []


def process_role(
    argv: Sequence[str] | None = None, orig_argv: Sequence[str] | None = None
) -> Role:
    """The :class:`Role` of the process with this command line (default: this process)."""
    args = celery_arguments(
        sys.argv if argv is None else argv,
        getattr(sys, "orig_argv", ()) if orig_argv is None else orig_argv,
    )
    if args is None:
        return Role.OTHER_PROGRAM
    subcommand, options = split_subcommand(args)
    if subcommand == "worker":
        before_passthrough = options[: options.index("--")] if "--" in options else options
        if _DETACH_FLAGS.intersection(before_passthrough):
            return Role.DETACHING_WORKER
        return Role.WORKER
    return _BY_SUBCOMMAND.get(subcommand or "", Role.SHORT_LIVED_COMMAND)
