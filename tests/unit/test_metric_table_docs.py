"""The documents users read agree with the code they describe."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.recording.settings import documented_variables

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def _generator() -> ModuleType:
    """docs/metrics_reference.py, the reference document's generator."""
    path = DOCS / "metrics_reference.py"
    spec = importlib.util.spec_from_file_location("metrics_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ref = _generator()


def test_metrics_reference_is_generated_from_the_metric_table() -> None:
    on_disk = (DOCS / "metrics.md").read_text()
    assert on_disk == ref.render_reference(), (
        "docs/metrics.md is stale: run `python docs/metrics_reference.py > docs/metrics.md`"
    )


def test_metrics_reference_lists_every_metric_with_its_prometheus_name() -> None:
    text = (DOCS / "metrics.md").read_text()
    for spec in mt.METRICS + mt.EXPORTER_METRICS:
        assert f"| `{spec.prometheus_name}` | `{spec.name}` |" in text


def test_metric_names_are_unique_and_described() -> None:
    specs = mt.METRICS + mt.EXPORTER_METRICS
    names = [s.prometheus_name for s in specs]
    assert len(names) == len(set(names))
    for spec in specs:
        assert spec.description.strip(), spec.name
        if spec.kind is mt.InstrumentKind.HISTOGRAM:
            assert spec.buckets and list(spec.buckets) == sorted(set(spec.buckets)), spec.name


def test_every_attribute_says_where_its_values_come_from_and_what_bounds_them() -> None:
    used = {a for spec in mt.METRICS + mt.EXPORTER_METRICS for a in spec.attributes}
    documented = [source.key for source in ref.ATTRIBUTE_SOURCES]
    assert sorted(documented) == sorted(used)
    for source in ref.ATTRIBUTE_SOURCES:
        assert source.in_process and source.exporter and source.bounded, source.key
        assert source.tests, f"{source.key}: no test checks where its values come from"


@pytest.mark.parametrize(
    "test_id", sorted({t for source in ref.ATTRIBUTE_SOURCES for t in source.tests})
)
def test_every_test_an_attribute_source_names_exists(test_id: str) -> None:
    path, _, function = test_id.partition("::")
    module = ast.parse((REPO / path).read_text())
    names = {n.name for n in ast.walk(module) if isinstance(n, ast.FunctionDef)}
    assert function in names, f"{test_id} does not exist"


def test_our_names_do_not_collide_with_the_tracing_instrumentation() -> None:
    # opentelemetry-instrumentation-celery's metric; users run both packages.
    assert "flower.task.runtime.seconds" not in {s.name for s in mt.METRICS}


def _configuration_rows() -> dict[str, str]:
    """Table rows of docs/configuration.md keyed by the `VARIABLE` in their first cell."""
    rows: dict[str, str] = {}
    for line in (DOCS / "configuration.md").read_text().splitlines():
        match = re.match(r"^\|\s*`(OTEL_[A-Z0-9_]+)`\s*\|", line)
        if match:
            rows[match.group(1)] = line
    return rows


@pytest.mark.parametrize(("variable", "default"), documented_variables())
def test_every_setting_is_documented_with_its_default(variable: str, default: str) -> None:
    rows = _configuration_rows()
    assert variable in rows, f"{variable} is missing from docs/configuration.md"
    assert (f"`{default}`" if default else "| unset |") in rows[variable], (
        f"docs/configuration.md documents {variable} without its default `{default}`"
    )


def test_configuration_documents_the_standard_variables_we_honour() -> None:
    text = (DOCS / "configuration.md").read_text()
    for variable in (
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_PROMETHEUS_HOST",
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
        "setup_metrics(",
    ):
        assert variable in text, variable


def test_task_name_cap_is_one_rule_in_the_reference_and_the_configuration_page() -> None:
    # Issue 29: the reference said registered names are exempt from the cap; they are not.
    (source,) = [s for s in ref.ATTRIBUTE_SOURCES if s.key == mt.TASK_NAME]
    assert source.bounded == ref.TASK_NAME_CAP_RULE
    assert ref.TASK_NAME_CAP_RULE in (DOCS / "metrics.md").read_text()
    row = _configuration_rows()["OTEL_CELERY_METRICS_MAX_TASK_NAMES"]
    for claim in ("registered or not", "a registered task's included", "__overflow__",
                  'otel_celery_metrics_overflow_total{attribute="task_name"}'):
        assert claim in row and claim in ref.TASK_NAME_CAP_RULE, claim
