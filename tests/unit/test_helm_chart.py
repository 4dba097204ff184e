"""charts/otel-celery-exporter, rendered by the real helm and decoded by the real API types.

``helm lint --strict`` and ``helm template`` (helm built from its Go module by scripts/setup)
with several value sets; every rendered manifest goes through ``manifest-check``
(tools/manifest-check: strict decoding into the Kubernetes and prometheus-operator Go types,
an unknown or mistyped field fails). The Deployment's command line is parsed by the real
``otel-celery-exporter`` argument parser; the rules and dashboards are the docs/deploy files.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_celery_metrics.exporter.cli import OPTIONS, REPEATABLE, _show, config_from_args
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.version import __version__
from tests.servers import tool
from tests.support import REPO

CHART = REPO / "charts" / "otel-celery-exporter"
DEPLOY = REPO / "docs" / "deploy"
SECRET_URL = "redis://:s3cret-pass@redis.celery:6379/0"  # noqa: S105 - a test value

MINIMAL: dict[str, Any] = {"broker": {"url": SECRET_URL}}
FULL: dict[str, Any] = {
    "broker": {"existingSecret": "celery-broker", "existingSecretKey": "url"},
    "config": {"queues": "default,emails", "enable-events": True, "receiver": "redis",
               "task-hostname-label": False, "max-task-names": 300},
    "staticLabels": {"team": "payments", "cluster": "eu-1"},
    "metricsExporters": ["prometheus", "otlp"],
    "otlp": {"endpoint": "http://otel-collector:4318", "headersSecret": "otlp-auth"},
    "webConfig": {"content": "tls_server_config:\n  cert_file: /tls/tls.crt\n", "tls": True},
    "probeHttpHeaders": [{"name": "Authorization", "value": "Basic cHJvYmU6cHJvYmU="}],
    "env": [{"name": "OTEL_SERVICE_NAME", "value": "celery-events"}],
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "tlsConfig": {"insecureSkipVerify": True}},
    "prometheusRule": {"enabled": True},
    "dashboards": {"enabled": True},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "256Mi"}},
}
OTLP_ONLY: dict[str, Any] = {
    "broker": {"url": "amqp://guest:guest@rabbitmq:5672//"},
    "metricsExporters": ["otlp"],
    "otlp": {"endpoint": "http://otel-collector:4317", "protocol": "grpc"},
}
VALUE_SETS = {"minimal": MINIMAL, "full": FULL, "otlp-only": OTLP_ONLY}


def helm(*args: str, values: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    return subprocess.run([tool("helm"), *args, str(CHART), "-f", str(values_file)],
                          capture_output=True, text=True, timeout=60, check=False)


def manifest_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("manifest-check")], input=text, capture_output=True, text=True,
                          timeout=60, check=False)


def render(values: dict[str, Any], tmp_path: Path) -> list[dict[str, Any]]:
    """The rendered documents, after helm succeeded and manifest-check accepted them all."""
    result = helm("template", "celery", values=values, tmp_path=tmp_path)
    assert result.returncode == 0, result.stderr
    checked = manifest_check(result.stdout)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (exporter,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return exporter


def parsed_config(docs: list[dict[str, Any]]) -> ExporterConfig:
    """The Deployment's command line and plain env, through the exporter's own parser; the
    Secret-backed variables get stand-ins (their values live in the cluster)."""
    spec = container(docs)
    assert spec["command"] == ["otel-celery-exporter"]
    environ = {e["name"]: e.get("value", f"redis://from-secret-{e['name']}:6379/0")
               for e in spec["env"]}
    return config_from_args(spec["args"], environ)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict_and_every_manifest_decodes_into_the_real_types(
    name: str, tmp_path: Path
) -> None:
    lint = helm("lint", "--strict", values=VALUE_SETS[name], tmp_path=tmp_path)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    kinds = sorted(d["kind"] for d in render(VALUE_SETS[name], tmp_path))
    expected = {
        "minimal": ["Deployment", "Secret", "Service", "ServiceAccount"],
        "full": ["ConfigMap", "ConfigMap", "Deployment", "PrometheusRule", "Secret", "Service",
                 "ServiceAccount", "ServiceMonitor"],
        "otlp-only": ["Deployment", "Secret", "Service", "ServiceAccount"],
    }[name]
    assert kinds == expected


def test_a_mistyped_or_unknown_field_in_a_rendered_manifest_fails_the_check(
    tmp_path: Path,
) -> None:
    text = helm("template", "celery", values=MINIMAL, tmp_path=tmp_path).stdout
    mistyped = text.replace("runAsUser: 10001", 'runAsUser: "root"', 1)
    unknown = text.replace("readOnlyRootFilesystem: true",
                           "readOnlyRootFilesystem: true\n            readOnlyRoot: true", 1)
    for bad in (mistyped, unknown):
        assert bad != text
        result = manifest_check(bad)
        assert result.returncode == 1, result.stdout
        assert "Deployment" in result.stdout + result.stderr


def test_the_deployment_runs_what_the_exporter_parser_accepts(tmp_path: Path) -> None:
    config = parsed_config(render(FULL, tmp_path))
    assert config.broker_url == "redis://from-secret-OTEL_CELERY_EXPORTER_BROKER_URL:6379/0"
    assert (config.host, config.port) == ("0.0.0.0", 9808)
    assert config.queues == ("default", "emails")
    assert (config.enable_events, config.task_hostname_label) == (True, False)
    assert (config.receiver, config.max_task_names) == ("redis", 300)
    assert config.static_labels == (("cluster", "eu-1"), ("team", "payments"))
    assert config.metrics_exporters == ("prometheus", "otlp")
    assert config.web_config_file == "/etc/otel-celery-exporter/web-config.yml"
    config = parsed_config(render(OTLP_ONLY, tmp_path))
    assert (config.metrics_exporters, config.otlp_protocol) == (("otlp",), "grpc")


def test_every_exporter_flag_is_reachable_from_values(tmp_path: Path) -> None:
    owned = {"broker_url", "host", "port", "web_config_file", "metrics_exporters",
             *REPEATABLE}
    every = {name.replace("_", "-"): _show(getattr(ExporterConfig(), name))
             for name in OPTIONS if name not in owned}
    every = {k: v for k, v in every.items() if v != "(none)"}
    for name in OPTIONS:
        default = getattr(ExporterConfig(), name)
        if isinstance(default, bool):
            every[name.replace("_", "-")] = not default  # --no-x / --x both reachable
    config = parsed_config(render({**MINIMAL, "config": every}, tmp_path))
    for name in OPTIONS:
        default = getattr(ExporterConfig(), name)
        flag = name.replace("_", "-")
        if name in owned or flag not in every:
            continue
        want = (not default) if isinstance(default, bool) else default
        assert getattr(config, name) == want, name


def test_the_broker_url_stays_in_a_secret_and_the_pod_is_locked_down(tmp_path: Path) -> None:
    docs = render(MINIMAL, tmp_path)
    secret = one(docs, "Secret")
    assert secret["stringData"] == {"broker-url": SECRET_URL}
    deployment = one(docs, "Deployment")
    assert "s3cret-pass" not in yaml.safe_dump(deployment)
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    spec = container(docs)
    assert spec["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["securityContext"]["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert spec["resources"]["requests"] and spec["resources"]["limits"]["memory"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert spec[probe]["httpGet"]["path"] == "/health"
        assert spec[probe]["httpGet"]["scheme"] == "HTTP"
    full = render(FULL, tmp_path)
    assert container(full)["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert one(full, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] == "https"
    mounts = {m["name"]: m for m in container(full)["volumeMounts"]}
    assert mounts["web-config"]["mountPath"] == "/etc/otel-celery-exporter"


def test_the_rules_and_dashboards_are_the_docs_deploy_files(tmp_path: Path) -> None:
    docs = render(FULL, tmp_path)
    groups = one(docs, "PrometheusRule")["spec"]["groups"]
    expected = [g for f in ("celery-recording-rules.yml", "celery-alerts.yml")
                for g in yaml.safe_load((DEPLOY / f).read_text())["groups"]]
    assert groups == expected
    dashboards = {k: v for d in docs if d["kind"] == "ConfigMap" for k, v in d["data"].items()}
    files = {p.name: p.read_text() for p in (DEPLOY / "grafana").glob("*.json")}
    assert dashboards == files
    assert all(json.loads(v)["panels"] for v in dashboards.values())
    for d in docs:
        if d["kind"] == "ConfigMap":
            assert d["metadata"]["labels"]["grafana_dashboard"] == "1"
    # One source: the chart's files are links into docs/deploy, not copies.
    for link in (CHART / "files").rglob("*"):
        if link.is_file():
            assert link.is_symlink(), link
            assert link.resolve().parent in (DEPLOY, DEPLOY / "grafana")


@pytest.mark.parametrize(("values", "message"), [
    ({}, "set broker.existingSecret (a Secret holding the broker URL) or broker.url"),
    ({**MINIMAL, "metricsExporters": ["otlp"]}, "metricsExporters has otlp: set otlp.endpoint"),
    ({**OTLP_ONLY, "serviceMonitor": {"enabled": True}},
     "serviceMonitor.enabled needs prometheus in metricsExporters"),
    ({**MINIMAL, "config": {"port": 1}}, "config.port is set by the chart from its own values"),
])
def test_values_that_cannot_work_fail_with_a_message(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    result = helm("template", "celery", values=values, tmp_path=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr


def test_chart_image_and_package_agree() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == __version__
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["otel-celery-exporter"\]$', dockerfile, re.MULTILINE)
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert user is not None
    assert int(user.group(1)) == values["podSecurityContext"]["runAsUser"]
    assert int(user.group(2)) == values["podSecurityContext"]["runAsGroup"]
    extras = re.search(r"\[([a-z,-]+)\]", dockerfile)
    assert extras is not None
    pyproject = (REPO / "pyproject.toml").read_text()
    for extra in extras.group(1).split(","):
        assert f"\n{extra} = [" in pyproject, extra
    assert f"EXPOSE {values['port']}" in dockerfile
