"""Green pools: which command lines count as a gevent/eventlet worker, and what is reported."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_celery_metrics import CeleryMetricsInstrumentor
from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.recording.settings import Settings
from otel_celery_metrics.worker.green import (
    GEVENT_PATCH_VARIABLE,
    check_green_pool,
    gevent_patched,
    patch_gevent_early,
    worker_pool,
)

CELERY = "/venv/bin/celery"


@pytest.mark.parametrize(
    ("argv", "pool"),
    [
        ([CELERY, "-A", "app", "worker", "-P", "gevent", "-c", "10"], "gevent"),
        ([CELERY, "-A", "app", "worker", "--pool", "eventlet"], "eventlet"),
        ([CELERY, "-A", "app", "worker", "--pool=gevent"], "gevent"),
        ([CELERY, "-A", "app", "worker", "-P", "threads"], "threads"),
        ([CELERY, "-A", "app", "worker"], None),
        ([CELERY, "-A", "app", "worker", "-P"], None),
        (["/usr/lib/python3/site-packages/celery/__main__.py", "worker", "-P", "gevent"],
         "gevent"),
        # Celery patches for neither: `celery multi` and other programs or subcommands.
        ([CELERY, "multi", "start", "w1", "worker", "-P", "gevent"], None),
        ([CELERY, "-A", "app", "inspect", "active", "-P", "gevent"], None),
        (["/usr/bin/gunicorn", "worker", "-P", "gevent"], None),
        ([], None),
    ],
)
def test_the_pool_is_read_from_the_command_line_as_celery_reads_it(
    argv: list[str], pool: str | None
) -> None:
    assert worker_pool(argv) == pool


def test_python_m_celery_is_recognised_while_sitecustomize_runs() -> None:
    argv = ["-m", "-A", "app", "worker", "-P", "gevent"]  # what sys.argv is at that point
    assert worker_pool(argv, ["/venv/bin/python", "-m", "celery", *argv[1:]]) == "gevent"
    assert worker_pool(argv, ["/venv/bin/python", "-m", "other", *argv[1:]]) is None


def test_gevent_is_patched_early_for_a_gevent_worker_only_unless_we_are_disabled() -> None:
    """In a fresh interpreter: patching is process-wide, never in the test process."""
    script = (
        "import sys\n"
        "from otel_celery_metrics.worker.green import gevent_patched, patch_gevent_early\n"
        "assert not patch_gevent_early(['/v/celery', '-A', 'a', 'worker', '-P', 'prefork'])\n"
        "assert not patch_gevent_early(['/v/celery', '-A', 'a', 'worker', '-P', 'eventlet'])\n"
        "assert 'gevent' not in sys.modules\n"
        "off = {'OTEL_PYTHON_DISABLED_INSTRUMENTATIONS': 'celery, celery_metrics'}\n"
        "assert not patch_gevent_early(['/v/celery', '-A', 'a', 'worker', '-P', 'gevent'], off)\n"
        "assert 'gevent' not in sys.modules\n"
        "assert patch_gevent_early(['/v/celery', '-A', 'a', 'worker', '-P', 'gevent'])\n"
        "assert gevent_patched()\n"
        "assert not patch_gevent_early(['/v/celery', '-A', 'a', 'worker', '-P', 'gevent'])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=False, timeout=60)
    assert done.returncode == 0, done.stderr


def test_patching_is_not_attempted_in_this_process_for_other_programs() -> None:
    assert not patch_gevent_early(sys.argv)  # pytest is not a celery worker
    assert not gevent_patched()


@pytest.mark.parametrize(
    ("pool", "reason", "says"),
    [
        ("gevent", "gevent_not_patched", f"Set {GEVENT_PATCH_VARIABLE}=patch_all"),
        ("eventlet", "eventlet_not_patched", "setup_metrics() from a celeryd_init receiver"),
    ],
)
def test_an_unpatched_green_pool_logs_one_error_naming_what_to_do(
    caplog: pytest.LogCaptureFixture, pool: str, reason: str, says: str
) -> None:
    with caplog.at_level(logging.INFO):
        got = check_green_pool([CELERY, "-A", "app", "worker", "-P", pool])
    assert got == reason
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert says in caplog.records[0].getMessage()
    assert f'otel_celery_metrics_degraded{{reason="{reason}"}}' in caplog.records[0].getMessage()


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo", None])
def test_other_pools_are_not_reported(caplog: pytest.LogCaptureFixture, pool: str | None) -> None:
    argv = [CELERY, "-A", "app", "worker", *(["-P", pool] if pool else [])]
    with caplog.at_level(logging.INFO):
        assert check_green_pool(argv) is None
    assert not caplog.records


def _degraded(reader: InMemoryMetricReader) -> dict[str, float]:
    data = reader.get_metrics_data()
    out: dict[str, float] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == mt.SELF_DEGRADED.name:
                    for point in metric.data.data_points:
                        out[str((point.attributes or {})["reason"])] = point.value  # type: ignore[attr-defined]
    return out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([CELERY, "-A", "app", "worker", "-P", "gevent"],
         {"gevent_not_patched": 1, "eventlet_not_patched": 0}),
        ([CELERY, "-A", "app", "worker", "-P", "threads"],
         {"gevent_not_patched": 0, "eventlet_not_patched": 0}),
    ],
)
def test_the_degraded_self_metric_reports_the_reason(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], expected: dict[str, float]
) -> None:
    pytest.importorskip("celery")
    monkeypatch.setattr(sys, "argv", argv)
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    instrumentor = CeleryMetricsInstrumentor()
    instrumentor.instrument(meter_provider=provider, settings=Settings())
    try:
        assert _degraded(reader) == expected
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
