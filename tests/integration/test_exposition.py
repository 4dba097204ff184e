"""The /metrics text of a real instrumented worker, as Prometheus tooling reads it."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from otel_celery_metrics.core import metric_table as mt
from tests.integration.mixed_batch import EXECUTED, TOTAL_TERMINAL, send_mixed_batch
from tests.support import producer, running_worker, scrape, value, wait_for

pytestmark = pytest.mark.integration

PROMTOOL = "/usr/bin/promtool"
#: Metrics the mixed batch must produce (the retries are published by the worker itself).
MUST_HAVE_DATA = (
    mt.TASKS,
    mt.TASK_RUNTIME,
    mt.TASK_FAILURES,
    mt.TASKS_PUBLISHED,
    mt.TASKS_RECEIVED,
    mt.TASK_QUEUE_WAIT,
)


def _promtool() -> str:
    found = PROMTOOL if shutil.which(PROMTOOL) else shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: install Debian's `prometheus` package (CI does)")
    return found


def _scrape_after_mixed_batch(redis_url: str, queue: str) -> str:
    with running_worker(redis_url, queue, pool="prefork", concurrency=2) as worker:
        send_mixed_batch(producer(redis_url), queue)

        def settled() -> bool:
            samples = worker.samples()
            return (
                value(samples, "celery_tasks_total") >= TOTAL_TERMINAL
                and value(samples, "celery_task_runtime_seconds_count") >= EXECUTED
            )

        wait_for(settled, timeout=60, what="the mixed batch in /metrics")
        return scrape(worker.port)


@pytest.fixture
def mixed_batch_exposition(redis_url: str, queue: str) -> str:
    return _scrape_after_mixed_batch(redis_url, queue)


def test_promtool_check_metrics_passes(mixed_batch_exposition: str) -> None:
    result = subprocess.run(
        [_promtool(), "check", "metrics"], input=mixed_batch_exposition,
        capture_output=True, text=True, timeout=30, check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert (result.returncode, problems) == (0, []), mixed_batch_exposition[:2000]


def _families(text: str) -> dict[str, dict[str, str]]:
    """Family name -> {"HELP": text, "TYPE": type} from the comment lines."""
    out: dict[str, dict[str, str]] = {}
    for match in re.finditer(r"^# (HELP|TYPE) (\S+) ?(.*)$", text, flags=re.MULTILINE):
        kind, name, rest = match.groups()
        out.setdefault(name, {})[kind] = rest
    return out


def _has_samples(text: str, spec: mt.MetricSpec) -> bool:
    base = spec.prometheus_name
    names = (base, f"{base}_count") if spec.kind is mt.InstrumentKind.HISTOGRAM else (base,)
    return any(re.search(rf"^{re.escape(n)}[{{ ]", text, flags=re.MULTILINE) for n in names)


def test_every_metric_with_data_has_its_help_and_type(mixed_batch_exposition: str) -> None:
    text = mixed_batch_exposition
    families = _families(text)
    with_data = [spec for spec in mt.METRICS if _has_samples(text, spec)]
    assert {s.name for s in MUST_HAVE_DATA} <= {s.name for s in with_data}
    for spec in with_data:
        family = families.get(spec.prometheus_name)
        assert family is not None, f"no # HELP/# TYPE for {spec.prometheus_name}"
        assert family.get("TYPE") == mt.prometheus_type(spec), spec.prometheus_name
        help_text = family.get("HELP", "").replace("\\\\", "\\")
        assert help_text == spec.description, spec.prometheus_name


@pytest.mark.parametrize(
    ("env", "scope_labels"),
    [({}, False), ({"OTEL_CELERY_METRICS_PROMETHEUS_SCOPE_LABELS": "true"}, True)],
    ids=["default-off", "env-on"],
)
def test_scope_labels_are_off_by_default_and_come_back_when_asked(
    redis_url: str, queue: str, env: dict[str, str], scope_labels: bool
) -> None:
    with running_worker(redis_url, queue, pool="solo", env=env) as worker:
        producer(redis_url).send_task("tests.ok", args=(1,), queue=queue, routing_key=queue)
        wait_for(lambda: value(worker.samples(), "celery_tasks_total", state="SUCCESS") >= 1,
                 timeout=30, what="one SUCCESS in /metrics")
        text = scrape(worker.port)
    ours = [line for line in text.splitlines() if line.startswith("celery_tasks_total{")]
    assert ours
    if scope_labels:
        assert all('otel_scope_name="otel_celery_metrics"' in line for line in ours), ours
    else:
        assert "otel_scope_" not in text
