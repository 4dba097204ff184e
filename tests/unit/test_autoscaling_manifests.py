"""The autoscaling manifests (docs/deploy/autoscaling-*.yaml) agree with each other, with the
worker Deployment and with the rules they read. Their shape against the real API types:
tests/unit/test_manifest_check.py; their queries on real data:
tests/integration/test_autoscaling_scenarios.py."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.support import REPO
from tests.unit.test_operator_kit import series_names

DEPLOY = REPO / "docs" / "deploy"
RULES = DEPLOY / "celery-autoscaling-rules.yml"


def documents(name: str) -> dict[str, dict[str, Any]]:
    """The documents of a manifest file by kind."""
    return {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d}


def worker_args() -> list[str]:
    deployment = documents("kubernetes.yaml")["Deployment"]
    container = next(c for c in deployment["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "worker")
    return [str(a) for a in container["command"]]


def flag(args: list[str], name: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{name}="))


def recorded() -> set[str]:
    return {r["record"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def keda_triggers() -> dict[str, dict[str, str]]:
    scaled = documents("autoscaling-keda.yaml")["ScaledObject"]
    return {t["name"]: t["metadata"] for t in scaled["spec"]["triggers"]}


def test_the_prometheus_rule_is_the_rules_file_unchanged() -> None:
    rule = documents("autoscaling-exporter.yaml")["PrometheusRule"]
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_keda_divides_by_the_workers_concurrency_and_reads_recorded_series() -> None:
    concurrency = flag(worker_args(), "concurrency")
    triggers = keda_triggers()
    outstanding = triggers["outstanding"]
    assert outstanding["query"].endswith(f"/ {concurrency}")
    assert outstanding["threshold"] == "1"  # tasks per process
    for meta in triggers.values():
        assert series_names(meta["query"]) <= recorded(), meta["query"]
        assert 'queue="celery"' in meta["query"]
        assert meta["ignoreNullValues"] == "false"  # no data must not read as 0
        assert meta["activationThreshold"] == "0"
    scaled = documents("autoscaling-keda.yaml")["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"]["name"] == documents("kubernetes.yaml")["Deployment"][
        "metadata"]["name"]
    assert scaled["minReplicaCount"] == 0
    # The worker consumes the queue the triggers read.
    args = worker_args()
    assert args[args.index("-Q") + 1] == "celery"


def test_the_hpa_reads_what_the_adapter_serves_from_recorded_series() -> None:
    docs = documents("autoscaling-hpa.yaml")
    adapter = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])
    served = {}
    for rule in adapter["externalRules"]:
        assert series_names(rule["seriesQuery"]) <= recorded()
        rendered = rule["metricsQuery"].replace("<<.LabelMatchers>>", 'queue="celery"')
        assert series_names(rendered) <= recorded()
        assert rule["resources"] == {"namespaced": False}
        served[rule["name"]["as"]] = rule
    (metric,) = docs["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] in served
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {"queue": "celery"}
    # tasks per replica = processes per replica x 1 task per process
    assert metric["external"]["target"]["averageValue"] == flag(worker_args(), "concurrency")


def test_warm_shutdown_fits_in_the_grace_period() -> None:
    pod = documents("kubernetes.yaml")["Deployment"]["spec"]["template"]["spec"]
    hard_limit = float(flag(worker_args(), "time-limit"))
    assert pod["terminationGracePeriodSeconds"] > hard_limit
    assert flag(worker_args(), "prefetch-multiplier") == "1"
    assert re.search(r"SIGTERM", (DEPLOY / "kubernetes.yaml").read_text())
