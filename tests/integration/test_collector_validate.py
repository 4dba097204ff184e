"""The shipped configurations load in the real tools that run them.

collector-config.yaml (which docs/deploy's compose file and Kubernetes manifest mount
unchanged) passes ``otelcol-celery validate``, the Collector's own check of components,
pipelines and settings; the Prometheus scrape configs under docs/deploy pass ``promtool
check config`` of Prometheus 2 and 3. A broken file fails the same check, so a pass means
something.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.servers import tool
from tests.support import REPO

pytestmark = pytest.mark.integration

DEPLOY = REPO / "docs" / "deploy"
ENV = {**os.environ, "TRACES_BACKEND_ENDPOINT": "tempo:4317"}


def _collector_configs() -> list[Path]:
    """collector-config.yaml and every Collector config file under docs/deploy."""
    found = [REPO / "collector-config.yaml"]
    for path in sorted(DEPLOY.glob("*.y*ml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        if any({"receivers", "exporters", "service"} <= d.keys() for d in docs):
            found.append(path)
    return found


def _validate(config: Path, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("otelcol-celery"), "validate", f"--config={config}"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("config", _collector_configs(), ids=lambda p: p.name)
def test_collector_config_passes_the_collectors_own_validation(config: Path) -> None:
    result = _validate(config)
    assert result.returncode == 0, result.stderr


def test_validation_rejects_a_broken_config_and_a_missing_traces_backend(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    config = yaml.safe_load((REPO / "collector-config.yaml").read_text())
    config["service"]["pipelines"]["metrics"]["exporters"] = ["prometheus", "nosuch"]
    broken.write_text(yaml.safe_dump(config))
    result = _validate(broken)
    assert result.returncode != 0
    assert "nosuch" in result.stderr

    no_backend = {k: v for k, v in ENV.items() if k != "TRACES_BACKEND_ENDPOINT"}
    result = _validate(REPO / "collector-config.yaml", no_backend)
    assert result.returncode != 0
    assert 'otlp_grpc/traces: requires a non-empty "endpoint"' in result.stderr


def _promtool_cases() -> list[tuple[Path, str]]:
    # Debian builds its Prometheus 2.42 without the Kubernetes service discovery, so its
    # promtool rejects kubernetes_sd_configs; Prometheus 3 (ours, upstream build) checks it.
    return [(config, promtool) for config in sorted(DEPLOY.glob("prometheus-*.yml"))
            for promtool in ("promtool", "promtool3")
            if not (promtool == "promtool" and "kubernetes" in config.name)]


@pytest.mark.parametrize(("config", "promtool"), _promtool_cases(),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_scrape_configs_pass_promtool(config: Path, promtool: str) -> None:
    binary = "/usr/bin/promtool" if promtool == "promtool" else tool(promtool)
    if not Path(binary).exists():
        pytest.fail(f"{binary} not found: apt-get install prometheus (scripts/setup does)")
    result = subprocess.run([binary, "check", "config", str(config)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
