"""Which processes may serve metrics, read from command lines as Celery builds them."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from celery.apps.multi import MultiParser, NamespacedOptionParser

from otel_celery_metrics.endpoint.server import MULTI_MARKER, plan_endpoint
from otel_celery_metrics.worker.process_role import Role, process_role
from otel_celery_metrics.worker.resource import worker_nodename

CELERY = "/venv/bin/celery"
PYTHON = "/venv/bin/python"


@pytest.mark.parametrize(
    ("args", "role"),
    [
        (("-A", "app", "worker", "-c", "2"), Role.WORKER),
        (("-A", "worker", "worker"), Role.WORKER),  # an app named "worker"
        (("-A", "app", "beat"), Role.BEAT),
        (("-A", "app", "beat", "--detach"), Role.BEAT),  # forks in-process: it is the beat
        (("-A", "app", "worker", "--detach"), Role.DETACHING_WORKER),
        (("-A", "app", "worker", "-D", "-n", "w1@%h"), Role.DETACHING_WORKER),
        (("-A", "app", "multi", "start", "3", "-c", "2"), Role.MULTI_LAUNCHER),
        (("multi", "stopwait", "w1"), Role.MULTI_LAUNCHER),
        (("-A", "app", "inspect", "ping"), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "control", "shutdown"), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "call", "tasks.add"), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "purge", "-f"), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "status"), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "result", "abc"), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "shell"), Role.SHORT_LIVED_COMMAND),
        (("--help",), Role.SHORT_LIVED_COMMAND),
        (("-A", "app", "flower", "--port=5555"), Role.MONITOR),
        (("-A", "app", "events", "--camera", "app.Camera"), Role.MONITOR),
    ],
)
def test_the_role_comes_from_the_celery_subcommand(args: tuple[str, ...], role: Role) -> None:
    assert process_role([CELERY, *args], []) is role
    # python -m celery: at sitecustomize time the module name is only in orig_argv.
    assert process_role(["-m", *args], [PYTHON, "-m", "celery", *args]) is role


@pytest.mark.parametrize(
    "argv", [["/srv/manage.py", "runserver"], ["gunicorn", "app:wsgi", "worker"], []]
)
def test_other_programs_are_left_alone(argv: list[str]) -> None:
    assert process_role(argv, argv) is Role.OTHER_PROGRAM
    assert Role.OTHER_PROGRAM.serves_metrics


def test_only_workers_beat_monitors_and_other_programs_serve_metrics() -> None:
    serving = {role for role in Role if role.serves_metrics}
    assert serving == {Role.OTHER_PROGRAM, Role.WORKER, Role.BEAT, Role.MONITOR}


def _multi_nodes(tmp_path: Path, *args: str) -> list[tuple[str, list[str]]]:
    """(node name, the sys.argv its --detach process has at sitecustomize time), built by
    Celery's own ``celery multi`` parser."""
    parser = NamespacedOptionParser(
        [*args, f"--pidfile={tmp_path}/%n.pid", f"--logfile={tmp_path}/%n%I.log"]
    )
    parser.parse()
    out = []
    for node in MultiParser(cmd=None).parse(parser):  # as MultiTool builds it
        full = node.prepare_argv(node.argv, PYTHON)  # [python, -m, celery, ...]
        assert full[:3] == [PYTHON, "-m", "celery"]
        out.append((node.name, ["-m", *full[3:]]))
    return out


def _after_detach(argv: list[str]) -> list[str]:
    """What ``celery worker --detach`` re-executes (celery/bin/worker.py)."""
    return [a for a in argv if a not in ("--detach", "-D")]


def test_celery_multi_nodes_detach_then_serve_each_on_its_own_port(tmp_path: Path) -> None:
    nodes = _multi_nodes(tmp_path, "3", "-A", "app", "-c", "2", "-Q:2", "b", "--hostname=box")
    assert [name for name, _argv in nodes] == ["celery1@box", "celery2@box", "celery3@box"]
    environ = {"OTEL_EXPORTER_PROMETHEUS_PORT": "9808", MULTI_MARKER: "1"}
    ports = []
    for name, argv in nodes:
        orig = [PYTHON, "-m", "celery", *argv[1:]]
        assert process_role(argv, orig) is Role.DETACHING_WORKER
        worker = _after_detach(argv)
        assert process_role(worker, [PYTHON, "-m", "celery", *worker[1:]]) is Role.WORKER
        nodename = worker_nodename(worker, [PYTHON, "-m", "celery"], {}, lambda: "box")
        assert nodename == name
        ports.append(plan_endpoint(environ, nodename).port)
    assert ports == [9808, 9809, 9810]


def test_this_process_is_pytest_not_celery() -> None:
    assert process_role() is Role.OTHER_PROGRAM
    assert sys.argv  # the default reads the real command line


@pytest.mark.parametrize(
    "role", [Role.MULTI_LAUNCHER, Role.DETACHING_WORKER, Role.SHORT_LIVED_COMMAND]
)
def test_the_instrumentor_does_nothing_and_says_nothing_where_nothing_is_served(
    role: Role, caplog: pytest.LogCaptureFixture
) -> None:
    from celery import signals
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_celery_metrics.instrumentor import CeleryMetricsInstrumentor

    receivers_before = len(signals.before_task_publish.receivers)
    instrumentor = CeleryMetricsInstrumentor()
    with caplog.at_level(logging.DEBUG, logger="otel_celery_metrics"):
        instrumentor.instrument(
            meter_provider=MeterProvider(), role=role,
            environ={"OTEL_CELERY_METRICS_RUNTIME_BUCKETS": "abc"},
        )
    try:
        assert instrumentor._wiring is None
        assert len(signals.before_task_publish.receivers) == receivers_before
        assert caplog.records == []  # not even the bad setting: this process records nothing
    finally:
        instrumentor.uninstrument()
