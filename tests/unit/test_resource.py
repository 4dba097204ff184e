"""The ``celery_worker`` resource detector: node name parsing, expansion and worker identity."""

from __future__ import annotations

import os
import sys

import pytest
from celery.utils.nodenames import default_nodename, host_format
from opentelemetry.sdk.resources import Resource, get_aggregated_resources

from otel_celery_metrics.worker import resource as _resource
from otel_celery_metrics.worker.resource import (
    CELERY_WORKER_HOSTNAME,
    HOST_NAME,
    SERVICE_INSTANCE_ID,
    CeleryWorkerResourceDetector,
    celery_arguments,
    expand_nodename,
    worker_nodename,
)

CELERY = "/venv/bin/celery"


def nodename(*args: str, environ: dict[str, str] | None = None, host: str = "box.example.com"
             ) -> str | None:
    return worker_nodename([CELERY, *args], (), environ or {}, lambda: host)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("-A", "app", "worker"), "celery@box.example.com"),
        (("-A", "app", "worker", "-n", "w1@%h"), "w1@box.example.com"),
        (("-A", "app", "worker", "-n", "w1@%n"), "w1@box"),
        (("-A", "app", "worker", "-n", "w1@%n.%d"), "w1@box.example.com"),
        (("-A", "app", "worker", "--hostname", "w2@%h"), "w2@box.example.com"),
        (("-A", "app", "worker", "--hostname=w3@fixed"), "w3@fixed"),
        (("-A", "app", "worker", "-nw4@%n"), "w4@box"),
        (("-A", "app", "worker", "-n", "onlyhost"), "celery@onlyhost"),
        (("-A", "app", "worker", "-n", "w1@%h", "-n", "last@%h"), "last@box.example.com"),
        # "worker" as the app's name is not the subcommand.
        (("-A", "worker", "-b", "redis://x", "worker", "-Q", "q"), "celery@box.example.com"),
        (("--app=app", "worker", "-l", "INFO", "-c", "2", "-n", "x@%h"), "x@box.example.com"),
    ],
)
def test_worker_node_name_is_read_from_the_command_line_as_celery_resolves_it(
    args: tuple[str, ...], expected: str
) -> None:
    assert nodename(*args) == expected


def test_node_name_falls_back_to_celerys_environment_variable() -> None:
    env = {"CELERY_WORKER_HOSTNAME": "env@%n"}
    assert nodename("-A", "app", "worker", environ=env) == "env@box"
    # The command line wins over the variable, as in click.
    assert nodename("-A", "app", "worker", "-n", "cli@%n", environ=env) == "cli@box"


@pytest.mark.parametrize(
    "argv",
    [
        [CELERY, "-A", "app", "beat"],
        [CELERY, "-A", "app", "inspect", "ping"],
        [CELERY, "-A", "app", "multi", "start", "w1", "worker"],
        ["/srv/app/manage.py", "runserver"],
        ["gunicorn", "app:wsgi", "worker"],
        [],
    ],
)
def test_processes_that_are_not_a_celery_worker_get_no_node_name(argv: list[str]) -> None:
    assert worker_nodename(argv, (), {}, lambda: "h") is None


def test_python_dash_m_celery_is_recognised_from_orig_argv() -> None:
    # At sitecustomize time the module name is only in sys.orig_argv.
    assert celery_arguments(["-m", "-A", "app", "worker"],
                            ["/usr/bin/python", "-m", "celery", "-A", "app", "worker"]) == [
        "-A", "app", "worker"]
    assert celery_arguments(["-m", "serve"], ["/usr/bin/python", "-m", "http.server"]) is None


@pytest.mark.parametrize(
    "value",
    ["", "w1@%h", "w1@%n", "w1@%n.%d", "w1@%d", "plainhost", "@%h", "a@b@c", "w%%1@%h",
     "w-%i@%h", "w%I@%h"],
)
@pytest.mark.parametrize("host", ["box.example.com", "box", "a.b.c"])
def test_expansion_matches_celerys_own_functions(value: str, host: str) -> None:
    # Celery expands against socket.gethostname(); give it the same host.
    expected = _celery_expand(value, host)
    assert expand_nodename(value, host) == expected


def _celery_expand(value: str, host: str) -> str:
    from unittest import mock

    with mock.patch("celery.utils.nodenames.gethostname", return_value=host):
        return str(host_format(default_nodename(value or None)))


def test_instance_id_is_one_per_worker_and_survives_fork() -> None:
    detector = CeleryWorkerResourceDetector(argv=[CELERY, "-A", "a", "worker"], orig_argv=[],
                                            environ={}, gethostname=lambda: "h")
    first = detector.detect().attributes
    assert first[CELERY_WORKER_HOSTNAME] == "celery@h"
    assert first[HOST_NAME] == "h"
    assert detector.detect().attributes[SERVICE_INSTANCE_ID] == first[SERVICE_INSTANCE_ID]
    assert detector.is_process_dependent()

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "pool child": detect again, as the SDK does after a fork
        try:
            os.write(write_end, str(detector.detect().attributes[SERVICE_INSTANCE_ID]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child_id = os.read(read_end, 100).decode()
    os.waitpid(pid, 0)
    os.close(read_end)
    assert child_id == first[SERVICE_INSTANCE_ID]


def test_an_explicit_instance_id_is_kept() -> None:
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.instance.id=w%2D7"}
    detector = CeleryWorkerResourceDetector(argv=[CELERY, "worker"], orig_argv=[], environ=env,
                                            gethostname=lambda: "h")
    assert detector.detect().attributes[SERVICE_INSTANCE_ID] == "w-7"


def test_outside_a_worker_the_detector_adds_nothing() -> None:
    detector = CeleryWorkerResourceDetector(argv=["gunicorn", "app"], orig_argv=[], environ={})
    assert detector.detect() == Resource.get_empty()


def test_the_worker_id_wins_over_the_sdks_per_process_id_after_a_fork() -> None:
    # What the SDK does in a forked child: re-run the process-dependent detectors in
    # order (its own service_instance first) and merge the result over the resource.
    from opentelemetry.sdk.resources import ServiceInstanceIdResourceDetector

    ours = CeleryWorkerResourceDetector(argv=[CELERY, "worker"], orig_argv=[], environ={})
    merged = get_aggregated_resources([ServiceInstanceIdResourceDetector(), ours],
                                      Resource.get_empty())
    assert merged.attributes[SERVICE_INSTANCE_ID] == ours.detect().attributes[SERVICE_INSTANCE_ID]


def test_the_sdk_loads_the_detector_by_its_entry_point_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "celery_worker")
    monkeypatch.setattr(sys, "argv", [CELERY, "-A", "app", "worker", "-n", "ep@%h"])
    resource = Resource.create({"service.name": "svc"})
    assert str(resource.attributes[CELERY_WORKER_HOSTNAME]).startswith("ep@")
    assert resource.attributes[SERVICE_INSTANCE_ID] == _resource._worker_instance_id()
    assert resource.attributes["service.name"] == "svc"
