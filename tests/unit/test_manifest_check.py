"""tools/manifest-check: every shipped manifest decodes strictly into the real API types,
and the checker rejects what the API server would (an unknown or mistyped field, an
unknown kind), naming the document, kind and field path."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.servers import tool
from tests.support import REPO

#: Every Kubernetes manifest the project ships (docs/deploy also holds Collector configs).
MANIFESTS = sorted(
    p for p in (REPO / "docs" / "deploy").glob("*.yaml")
    if "\napiVersion:" in "\n" + p.read_text()
)


def check(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("manifest-check"), *args], input=stdin, capture_output=True,
                          text=True, check=False, timeout=60)


def test_shipped_manifests_decode_strictly() -> None:
    assert MANIFESTS
    result = check(*map(str, MANIFESTS))
    assert result.returncode == 0, result.stderr
    assert "documents ok" in result.stdout


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker}
spec:
  selector: {matchLabels: {app: w}}
  template:
    metadata: {labels: {app: w}}
    spec:
      terminationGracePeriodSeconds: 300
      containers: [{name: worker, image: app:1}]
"""


def test_a_valid_document_passes_on_stdin() -> None:
    result = check(stdin=DEPLOYMENT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "manifest-check: 1 documents ok"


@pytest.mark.parametrize(("change", "expected"), [
    # A misspelt field is silently dropped by `kubectl apply` without --validate=strict.
    (("terminationGracePeriodSeconds", "terminationGracePeriodSecond"),
     'document 1 (Deployment worker): unknown field '
     '"spec.template.spec.terminationGracePeriodSecond"'),
    (("terminationGracePeriodSeconds: 300", 'terminationGracePeriodSeconds: "300"'),
     "document 1 (Deployment worker): json: cannot unmarshal string into Go struct field "
     "PodSpec.spec.template.spec.terminationGracePeriodSeconds of type int64"),
    (("apps/v1", "apps/v2"), "document 1 (Deployment worker): unknown apiVersion/kind "
     "apps/v2/Deployment"),
])
def test_a_mistyped_document_fails_with_its_field_path(
    change: tuple[str, str], expected: str
) -> None:
    result = check("-", stdin=DEPLOYMENT.replace(*change))
    assert result.returncode == 1
    assert f"<stdin>: {expected}\n" in result.stderr, result.stderr
    assert "1 of 1 documents failed" in result.stderr


def test_keda_and_prometheus_operator_kinds_are_checked(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(
        "apiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {name: s}\n"
        "spec:\n  scaleTargetRef: {name: worker}\n  triggers:\n"
        "  - type: prometheus\n    metadata: {query: up, threshold: '1'}\n"
        "    activationThreshhold: '0'\n"
        "---\n"
        "apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata: {name: r}\n"
        "spec:\n  groups: [{name: g, rules: [{record: a, expr: 1, for: 5}]}]\n"
        "---\n# only a comment\n"
    )
    result = check(str(manifest))
    assert result.returncode == 1
    assert (f"{manifest}: document 1 (ScaledObject s): unknown field "
            '"spec.triggers[0].activationThreshhold"') in result.stderr
    assert f"{manifest}: document 2 (PrometheusRule r): " in result.stderr
    assert "2 of 2 documents failed" in result.stderr


def test_an_unreadable_file_is_a_usage_error(tmp_path: Path) -> None:
    result = check(str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "missing.yaml" in result.stderr
