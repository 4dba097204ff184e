"""The autoscaling rules (docs/deploy/celery-autoscaling-rules.yml): valid for Prometheus 2
and 3, unit-tested with promtool term by term, and naming only series of the metric table.
Real brokers, workers and Prometheus: tests/integration/test_autoscaling_scenarios.py."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from otel_celery_metrics.core import metric_table as mt
from tests.support import REPO
from tests.unit.test_operator_kit import promtool, series_names, table_series

pytestmark = pytest.mark.prometheus

RULES = REPO / "docs" / "deploy" / "celery-autoscaling-rules.yml"
RULE_TESTS = REPO / "tests" / "unit" / "rules" / "celery-autoscaling.test.yml"
#: What docs/autoscaling.md and the manifests scale on.
SIGNALS = {"queue:celery_outstanding_tasks:sum", "queue:celery_scheduled_tasks:sum",
           "queue:celery_capacity_processes:sum", "queue:celery_load:ratio",
           "queue:celery_idle:bool"}


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


@pytest.mark.parametrize("version", ["2", "3"])
def test_promtool_checks_the_rules_and_their_unit_tests_pass(version: str) -> None:
    checked = subprocess.run([promtool(version), "check", "rules", str(RULES)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(version), "test", "rules", RULE_TESTS.name],
                            capture_output=True, text=True, check=False, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout[-4000:] + tested.stderr[-2000:]
    assert "SUCCESS" in tested.stdout


def test_rules_name_only_table_series_and_every_autoscaling_term() -> None:
    recorded = {r["record"] for r in rules()}
    assert recorded >= SIGNALS
    used = set().union(*(series_names(r["expr"]) for r in rules()))
    assert used - table_series() - recorded == set()
    for spec in (mt.QUEUE_MESSAGES, mt.QUEUE_UNACKED, mt.QUEUE_UNACKED_SCHEDULED,
                 mt.TASKS_RESERVED, mt.TASKS_EXECUTING, mt.TASKS_SCHEDULED,
                 mt.WORKER_QUEUE_PROCESSES, mt.QUEUE_PROCESSES, mt.EXPORTER_BROKER_CONNECTED):
        assert spec.prometheus_name in used, spec.prometheus_name


def test_every_signal_is_unit_tested() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert [(RULE_TESTS.parent / f).resolve() for f in tests["rule_files"]] == [RULES.resolve()]
    tested = {check["expr"] for case in tests["tests"] for check in case["promql_expr_test"]}
    assert tested >= SIGNALS
