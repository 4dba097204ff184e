"""collector-config.yaml and the deployment examples in docs/deploy/ hang together.

No Docker engine or cluster runs here, so these checks are structural (the real Collector
and Prometheus run the same files in tests/integration/test_collector_*.py): every file
parses, every pipeline names defined components (and every defined component is used),
the components are ones current Collector releases accept under their current names, and
the ports agree between the worker's variables, the Collector's receivers and exporter,
and the Prometheus scrape configs.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from otel_celery_metrics.worker.resource import CELERY_WORKER_HOSTNAME

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "docs" / "deploy"
SECTIONS = ("receivers", "processors", "exporters", "connectors")
# Component types (the part before "/") this config may use: current names only.
CURRENT_TYPES = {
    "receivers": {"otlp"},
    "processors": {"memory_limiter", "batch", "transform", "resource"},
    "exporters": {"prometheus", "otlp_grpc", "otlp_http", "debug"},
    "extensions": {"health_check"},
}
# Names current releases reject or only accept as deprecated aliases.
RENAMED = {"logging": "debug", "otlphttp": "otlp_http", "otlp": "otlp_grpc"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def collector() -> dict[str, Any]:
    config = load(ROOT / "collector-config.yaml")
    assert isinstance(config, dict)
    return config


def _port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def _type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def receiver_ports(collector: dict[str, Any]) -> dict[str, int]:
    protocols = collector["receivers"]["otlp"]["protocols"]
    return {name: _port(p["endpoint"]) for name, p in protocols.items()}


def exporter_port(collector: dict[str, Any]) -> int:
    return _port(collector["exporters"]["prometheus"]["endpoint"])


def health_port(collector: dict[str, Any]) -> int:
    return _port(collector["extensions"]["health_check"]["endpoint"])


def otlp_port_for(protocol: str, collector: dict[str, Any]) -> int:
    ports = receiver_ports(collector)
    return ports["grpc"] if protocol == "grpc" else ports["http"]


# -- the Collector configuration -------------------------------------------------------


def test_every_pipeline_names_defined_components_and_every_component_is_used(
    collector: dict[str, Any],
) -> None:
    service = collector["service"]
    used: dict[str, set[str]] = {section: set() for section in SECTIONS}
    for name, pipeline in service["pipelines"].items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), name
        for section in ("receivers", "processors", "exporters"):
            for component in pipeline.get(section, []):
                assert component in collector.get(section, {}), (
                    f"pipeline {name} uses undefined {section[:-1]} {component}"
                )
                used[section].add(component)
    for section in ("receivers", "processors", "exporters"):
        unused = set(collector.get(section, {})) - used[section]
        assert not unused, f"defined but unused {section}: {unused}"
    assert set(service["extensions"]) == set(collector["extensions"])


def test_components_use_current_names(collector: dict[str, Any]) -> None:
    for section, allowed in CURRENT_TYPES.items():
        for component in collector.get(section, {}):
            kind = _type(component)
            if section != "receivers":
                assert kind not in RENAMED, f"{component}: renamed to {RENAMED[kind]}"
            assert kind in allowed, f"unexpected {section[:-1]} type {kind}"


def test_pipelines_limit_memory_first_and_batch_last(collector: dict[str, Any]) -> None:
    pipelines = collector["service"]["pipelines"]
    assert {_type(n) for n in pipelines} == {"metrics", "traces"}
    for name, pipeline in pipelines.items():
        processors = pipeline["processors"]
        assert processors[0] == "memory_limiter", name
        assert processors[-1] == "batch", name
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    (traces_exporter,) = pipelines["traces"]["exporters"]
    assert _type(traces_exporter) == "otlp_grpc"


def test_traces_backend_address_comes_from_the_environment(collector: dict[str, Any]) -> None:
    (traces_exporter,) = collector["service"]["pipelines"]["traces"]["exporters"]
    endpoint = collector["exporters"][traces_exporter]["endpoint"]
    assert endpoint == "${env:TRACES_BACKEND_ENDPOINT}"


def test_otlp_receiver_listens_on_both_protocols_on_all_interfaces(
    collector: dict[str, Any],
) -> None:
    protocols = collector["receivers"]["otlp"]["protocols"]
    assert receiver_ports(collector) == {"grpc": 4317, "http": 4318}
    for protocol in protocols.values():
        assert protocol["endpoint"].startswith("0.0.0.0:")


def test_prometheus_exporter_serves_exemplars_and_expires_gone_workers(
    collector: dict[str, Any],
) -> None:
    prometheus = collector["exporters"]["prometheus"]
    assert prometheus["enable_open_metrics"] is True
    assert re.fullmatch(r"\d+[smh]", prometheus["metric_expiration"])
    assert prometheus["without_scope_info"] is True
    # All-or-nothing and deprecated; the transform processor copies what we want.
    assert "resource_to_telemetry_conversion" not in prometheus


def test_the_copied_resource_attribute_is_the_one_the_detector_sets(
    collector: dict[str, Any],
) -> None:
    statements = [
        s for group in collector["processors"]["transform/worker_labels"]["metric_statements"]
        for s in group["statements"]
    ]
    assert any(f'resource.attributes["{CELERY_WORKER_HOSTNAME}"]' in s for s in statements)


def test_every_env_placeholder_is_provided_by_the_deployments(collector: dict[str, Any]) -> None:
    text = (ROOT / "collector-config.yaml").read_text()
    placeholders = {
        m.group(1) for m in re.finditer(r"\$\{env:([A-Z_]+)(:-[^}]*)?\}", text) if not m.group(2)
    }
    assert placeholders == {"TRACES_BACKEND_ENDPOINT"}
    compose_env = compose()["services"]["otel-collector"]["environment"]
    k8s_env = {e["name"] for e in k8s_sidecar()["env"]}
    assert placeholders <= set(compose_env)
    assert placeholders <= k8s_env


# -- docker compose ----------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return dict(load(DEPLOY / "docker-compose.yml"))


def _worker_env_port(env: dict[str, str], collector: dict[str, Any]) -> None:
    endpoint = urlparse(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname == "localhost", "the sidecar is reached on localhost"
    assert endpoint.port == otlp_port_for(env["OTEL_EXPORTER_OTLP_PROTOCOL"], collector)
    assert env["OTEL_METRICS_EXPORTER"] == "otlp"
    assert env["OTEL_TRACES_EXPORTER"] == "otlp"
    detectors = env["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"].split(",")
    assert "celery_worker" in detectors
    assert "celery_worker" in entry_points(group="opentelemetry_resource_detector").names


def test_compose_worker_exports_to_the_sidecars_receiver(collector: dict[str, Any]) -> None:
    services = compose()["services"]
    assert {"redis", "worker", "otel-collector", "prometheus"} <= set(services)
    worker = services["worker"]
    assert worker["command"][:2] == ["opentelemetry-instrument", "celery"]
    assert "worker" in worker["command"]
    _worker_env_port(worker["environment"], collector)
    sidecar = services["otel-collector"]
    assert sidecar["network_mode"] == "service:worker"
    # The sidecar runs this repository's collector-config.yaml, not a copy.
    mounts = {v.split(":")[1]: v.split(":")[0] for v in sidecar["volumes"]}
    config_arg = next(a for a in sidecar["command"] if a.startswith("--config="))
    config_path = config_arg.split("=", 1)[1]
    assert (DEPLOY / mounts[config_path]).resolve() == ROOT / "collector-config.yaml"


def test_compose_worker_image_installs_this_checkout_from_files_that_exist() -> None:
    # Issue 29: no release is on the package index yet; the image builds from the clone
    # (the same files `pip wheel` needs: pyproject.toml, README.md, the package).
    build = compose()["services"]["worker"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    steps = [line.split() for line in build["dockerfile_inline"].splitlines() if line.strip()]
    copied = [src for step in steps if step[0] == "COPY" for src in step[1:-1]]
    assert copied and all((context / src).exists() for src in copied), copied
    assert {"pyproject.toml", "README.md", "otel_celery_metrics"} <= set(copied)
    assert any("pip install" in " ".join(s) and "'/src[all]'" in s for s in steps), steps


def test_compose_publishes_the_collector_ports_prometheus_scrapes(
    collector: dict[str, Any],
) -> None:
    services = compose()["services"]
    published = {int(p.split(":")[1].split("/")[0]) for p in services["worker"]["ports"]}
    assert exporter_port(collector) in published
    assert health_port(collector) in published
    prometheus = services["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == "./prometheus-collector.yml"
    assert "--enable-feature=exemplar-storage" in prometheus["command"]


# -- Prometheus scrape configs -------------------------------------------------------------


def _targets(config: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    return [
        (job, target)
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    ]


def test_collector_scrape_config_honors_labels_and_targets_the_exporter_port(
    collector: dict[str, Any],
) -> None:
    for name in ("prometheus-collector.yml", "prometheus-collector-kubernetes.yml"):
        config = load(DEPLOY / name)
        assert config["scrape_configs"], name
        for job in config["scrape_configs"]:
            assert job["honor_labels"] is True, f"{name}: {job['job_name']}"
    targets = _targets(load(DEPLOY / "prometheus-collector.yml"))
    assert targets
    for _job, target in targets:
        host, port = target.rsplit(":", 1)
        assert int(port) == exporter_port(collector)
        # In compose the sidecar is reached through the worker's network namespace.
        assert host == "worker"
        assert host in compose()["services"]


def test_direct_scrape_config_targets_the_workers_own_endpoint() -> None:
    config = load(DEPLOY / "prometheus-direct.yml")
    targets = _targets(config)
    assert targets
    for job, target in targets:
        # The worker's OTEL_EXPORTER_PROMETHEUS_PORT (9809 in the README and issue 2).
        assert target.endswith(":9809")
        # Prometheus's own job/instance identify the worker here.
        assert not job.get("honor_labels", False)


# -- Kubernetes ----------------------------------------------------------------------------


def k8s_docs() -> list[dict[str, Any]]:
    return load_all(DEPLOY / "kubernetes.yaml")


def k8s_pod() -> dict[str, Any]:
    deployment = next(d for d in k8s_docs() if d["kind"] == "Deployment")
    return dict(deployment["spec"]["template"])


def k8s_sidecar() -> dict[str, Any]:
    spec = k8s_pod()["spec"]
    (sidecar,) = [c for c in spec["initContainers"] if c["name"] == "otel-collector"]
    return dict(sidecar)


def test_k8s_worker_exports_to_its_native_sidecar(collector: dict[str, Any]) -> None:
    spec = k8s_pod()["spec"]
    sidecar = k8s_sidecar()
    # A native sidecar: outlives the worker, so the final export at shutdown lands.
    assert sidecar["restartPolicy"] == "Always"
    (worker,) = spec["containers"]
    assert worker["command"][:2] == ["opentelemetry-instrument", "celery"]
    env = {e["name"]: e.get("value", "") for e in worker["env"]}
    _worker_env_port(env, collector)
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports["otlp-grpc"] == receiver_ports(collector)["grpc"]
    assert ports["otlp-http"] == receiver_ports(collector)["http"]
    assert ports["prom-metrics"] == exporter_port(collector)
    assert ports["health"] == health_port(collector)
    for probe in ("startupProbe", "livenessProbe"):
        assert sidecar[probe]["httpGet"]["port"] == "health"
    # The config is collector-config.yaml, mounted from a ConfigMap at the --config path.
    config_arg = next(a for a in sidecar["args"] if a.startswith("--config="))
    (mount,) = sidecar["volumeMounts"]
    assert config_arg == f"--config={mount['mountPath']}/config.yaml"
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert "kubectl create configmap " + volume["configMap"]["name"] + (
        " --from-file=config.yaml=collector-config.yaml"
    ) in (DEPLOY / "kubernetes.yaml").read_text()


def test_k8s_scrape_annotations_and_podmonitor_point_at_the_exporter(
    collector: dict[str, Any],
) -> None:
    annotations = k8s_pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == exporter_port(collector)
    monitor = next(d for d in k8s_docs() if d["kind"] == "PodMonitor")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is True
    ports = {p["name"]: p["containerPort"] for p in k8s_sidecar()["ports"]}
    assert ports[endpoint["port"]] == exporter_port(collector)
    pod_labels = k8s_pod()["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_documented_user_command_matches_the_receiver(collector: dict[str, Any]) -> None:
    text = (ROOT / "docs" / "collector.md").read_text()
    match = re.search(r"OTEL_EXPORTER_OTLP_ENDPOINT=(\S+)", text)
    assert match, "docs/collector.md shows the worker's OTLP endpoint"
    assert urlparse(match.group(1)).port == receiver_ports(collector)["http"]


def test_the_metrics_only_collector_config_is_the_shipped_one_without_traces() -> None:
    # Issue 29: a metrics-only trial needs no trace backend. Only the traces pipeline and
    # its exporter differ, so the metrics path a user tries is the one we ship.
    full = load(ROOT / "collector-config.yaml")
    del full["exporters"]["otlp_grpc/traces"]
    del full["service"]["pipelines"]["traces"]
    only = load(DEPLOY / "collector-metrics-only.yaml")
    assert only == full
    assert "${env:" not in (DEPLOY / "collector-metrics-only.yaml").read_text()
