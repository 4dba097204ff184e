"""The operator kit (docs/deploy/celery-*.yml rules, docs/deploy/grafana/ dashboards): valid
for Prometheus 2 and 3, every alert unit-tested with promtool, documented, and naming only
series that exist in the metric table, so renaming a metric breaks this test rather than a
user's dashboard. Real data: tests/integration/test_operator_kit_e2e.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from types import ModuleType
from typing import Any

import pytest
import yaml

from otel_celery_metrics.core import metric_table as mt
from tests.servers import tool
from tests.support import REPO

pytestmark = pytest.mark.prometheus

DEPLOY = REPO / "docs" / "deploy"
RULE_FILES = (DEPLOY / "celery-recording-rules.yml", DEPLOY / "celery-alerts.yml")
RULE_TESTS = REPO / "tests" / "unit" / "rules" / "celery-alerts.test.yml"
ALERTS_DOC = REPO / "docs" / "alerts.md"

#: Series an alert reads that another branch adds to the metric table. An entry must go as
#: soon as the table has the name (the test below fails then), so this cannot go stale.
PENDING_SERIES: dict[str, str] = {}
#: Series Prometheus itself makes.
PROMETHEUS_SERIES = {"up"}


def promtool(version: str) -> str:
    """Debian's promtool (Prometheus 2) or the promtool3 scripts/setup builds."""
    if version == "3":
        return tool("promtool3")
    found = shutil.which("promtool")
    if not found:
        pytest.fail("promtool not found: apt-get install prometheus (scripts/setup does)")
    return found


def load_build() -> ModuleType:
    """docs/deploy/grafana/build.py, the dashboards' one definition."""
    name = "otel_celery_metrics_grafana_build"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DEPLOY / "grafana" / "build.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    return sys.modules[name]


def rules() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            out += group["rules"]
    return out


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def table_series() -> set[str]:
    """Every series name the in-process instrumentor or the exporter can publish."""
    names: set[str] = set()
    for spec in (*mt.METRICS, *mt.EXPORTER_METRICS):
        name = spec.prometheus_name
        if spec.kind is mt.InstrumentKind.HISTOGRAM:
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        else:
            names.add(name)
    return names


_BRACES = re.compile(r"\{[^{}]*\}")
_NAME_MATCHER = re.compile(r'__name__\s*=~?\s*"([^"]*)"')
_LABEL_LISTS = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def series_names(promql: str) -> set[str]:
    """Metric names a PromQL expression (or a Grafana label_values() query) selects."""
    names: set[str] = set()
    for matcher in _NAME_MATCHER.findall(promql):
        names |= set(matcher.split("|"))
    text = _BRACES.sub(" ", promql)  # label matchers (values may hold anything)
    text = re.sub(r'"[^"]*"', " ", text)  # string arguments (label_replace's label names)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = _LABEL_LISTS.sub(" ", text)
    for ident, call in _IDENT.findall(text):
        if not call and ident.lower() not in _KEYWORDS:
            names.add(ident)
    return names


def test_series_names_parses_what_the_kit_uses() -> None:
    assert series_names(
        'sum by (job, le) (rate(celery_task_runtime_seconds_bucket{job=~"$job"}[$__rate_interval]))'
        ' / on (job) group_left up > 0 and 0.95 or x:y:z{a="b c"}'
    ) == {"celery_task_runtime_seconds_bucket", "up", "x:y:z"}
    assert series_names('{__name__=~"a_total|b",job=~"$job"}') == {
        "a_total", "b"}
    assert series_names('label_replace(max by (job) (a_seconds) > 1, "reason", "x", "", "")'
                        ) == {"a_seconds"}


def test_rules_and_dashboards_name_only_series_in_the_metric_table() -> None:
    build = load_build()
    recorded = {r["record"] for r in rules() if "record" in r}
    known = table_series() | recorded | PROMETHEUS_SERIES | set(PENDING_SERIES)
    used: dict[str, set[str]] = {}
    for rule in rules():
        used[rule.get("record") or rule["alert"]] = series_names(rule["expr"])
    for dash in build.DASHBOARDS:
        for row in dash.rows:
            for panel in row.panels:
                for target in panel.targets:
                    used[f"{dash.file}: {panel.title}"] = series_names(target.expr)
    for name, selector in build.VARIABLE_SOURCES.items():
        used[f"variable {name}"] = series_names(selector)
    unknown = {where: names - known for where, names in used.items() if names - known}
    assert not unknown, f"series not in metric_table (renamed?): {unknown}"
    # Dashboards read raw series only, so they work before the rules are loaded.
    dashboard_uses = set().union(*(v for k, v in used.items() if ".json" in k))
    assert not dashboard_uses & recorded
    # And the kit covers the table: every task series is read somewhere.
    everything = set().union(*used.values())
    for spec in (mt.TASKS, mt.TASK_FAILURES, mt.TASKS_EXECUTING, mt.TASKS_PREFETCHED,
                 mt.TASKS_RESERVED, mt.WORKER_POOL_PROCESSES, mt.TASKS_EXECUTING_OLDEST_AGE,
                 mt.TASKS_PAST_SOFT_TIME_LIMIT, mt.SELF_DROPPED, mt.SELF_OVERFLOW,
                 mt.WORKER_UP, mt.QUEUE_MESSAGES):
        assert spec.prometheus_name in everything, spec.prometheus_name


def test_pending_series_are_not_yet_in_the_table() -> None:
    landed = set(PENDING_SERIES) & table_series()
    assert not landed, f"{landed} are in metric_table now: remove them from PENDING_SERIES"


@pytest.mark.parametrize("version", ["2", "3"])
def test_promtool_checks_every_rules_file(version: str) -> None:
    result = subprocess.run(
        [promtool(version), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES), result.stdout


@pytest.mark.parametrize("version", ["2", "3"])
def test_promtool_unit_tests_of_every_alert_pass(version: str) -> None:
    result = subprocess.run(
        [promtool(version), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
        check=False, cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "SUCCESS" in result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - fired == set(), "alerts never shown to fire"
    assert names - quiet == set(), "alerts never shown to stay quiet"
    # The rules the tests load are the shipped ones.
    loaded = {(RULE_TESTS.parent / f).resolve() for f in
              yaml.safe_load(RULE_TESTS.read_text())["rule_files"]}
    assert loaded == {p.resolve() for p in RULE_FILES}


def test_every_alert_has_annotations_and_a_runbook_section() -> None:
    doc = ALERTS_DOC.read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", doc, re.M)}
    for alert in alerts():
        ann = alert["annotations"]
        assert {"summary", "description", "runbook_url"} <= ann.keys(), alert["alert"]
        assert ann["runbook_url"] == f"docs/alerts.md#{alert['alert'].lower()}"
        assert alert["alert"].lower() in anchors, f"docs/alerts.md has no ## {alert['alert']}"
        assert alert.get("for"), f"{alert['alert']} has no 'for'"
        assert alert["labels"]["severity"] in ("warning", "critical")


def test_dashboards_are_what_build_py_writes() -> None:
    build = load_build()
    for dash in build.DASHBOARDS:
        path = DEPLOY / "grafana" / dash.file
        assert path.read_text() == build.render_json(dash), (
            f"{path} is stale: run python docs/deploy/grafana/build.py")
    docs = build.DOCS.read_text()
    assert build.render_panel_list() in docs, "docs/dashboards.md panel list is stale"


def test_dashboards_have_datasource_job_queue_task_variables() -> None:
    build = load_build()
    for dash in build.DASHBOARDS:
        model = json.loads((DEPLOY / "grafana" / dash.file).read_text())
        assert model["schemaVersion"] >= 36  # Grafana 9.0+; 39 is Grafana 10.x
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"
        assert {"job", "queue", "task"} <= variables.keys()
        panels = [p for p in model["panels"] if p["type"] != "row"]
        assert panels
        for panel in panels:
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["description"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}"
                assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])


def test_panels_filter_by_queue_and_task_where_the_series_has_them() -> None:
    build = load_build()
    with_task = {"celery_tasks_total", "celery_task_failures_total",
                 "celery_task_runtime_seconds_bucket", "celery_task_queue_wait_seconds_bucket",
                 "celery_tasks_published_total", "celery_tasks_received_total",
                 "celery_tasks_executing", "celery_tasks_prefetched"}
    for dash in build.DASHBOARDS:
        for row in dash.rows:
            for panel in row.panels:
                for target in panel.targets:
                    for name in series_names(target.expr) & with_task:
                        for selector in re.findall(rf"{name}\{{([^}}]*)\}}", target.expr):
                            assert "$queue" in selector and "$task" in selector, (
                                panel.title, target.expr)


def test_docs_list_every_rules_file_and_dashboard() -> None:
    doc = ALERTS_DOC.read_text()
    for path in RULE_FILES:
        assert path.name in doc
    dashboards_doc = (REPO / "docs" / "dashboards.md").read_text()
    for dash in load_build().DASHBOARDS:
        assert dash.file in dashboards_doc
