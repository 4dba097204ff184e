"""Where metrics go (/metrics, OTLP, both), the standard OTEL_* variables, --static-label."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.exporter.cli import config_from_args, env_name
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.outputs import Outputs, exporter_resource, preferred_temporality
from otel_celery_metrics.exporter.service import Exporter
from tests.exporter.support import FakeClock, promtool_check, samples
from tests.exporter.unit.test_handlers import feed, lifecycle, scrape

LABELS = env_name("static_labels")


def test_static_labels_repeat_as_flags_comma_separate_in_the_variable_and_flags_win() -> None:
    flags = ["--static-label=team=payments", "--static-label", "env=prod"]
    assert config_from_args(flags, {}).static_labels == (("team", "payments"), ("env", "prod"))
    env = {LABELS: "cluster=eu-1, env=staging"}
    assert config_from_args([], env).static_labels == (("cluster", "eu-1"), ("env", "staging"))
    assert config_from_args(["--static-label=env=prod"], env).static_labels == (("env", "prod"),)


@pytest.mark.parametrize(("argv", "environ", "message"), [
    (["--static-label=queue=x"], {}, "'queue' is a label the exporter sets itself"),
    (["--static-label=job=x"], {}, "'job' is a label the exporter sets itself"),
    (["--static-label=team"], {}, "expected name=value: 'team'"),
    (["--static-label=team="], {}, "expected name=value: 'team='"),
    (["--static-label=1team=x"], {}, "not a Prometheus label name"),
    (["--static-label=__x=1"], {}, "not a Prometheus label name"),
    (["--static-label=a=1", "--static-label=a=2"], {}, "a label is given twice: a, a"),
    ([], {LABELS: "a=1,queue=2"}, f"{LABELS}: 'queue' is a label"),
    ([], {"OTEL_METRICS_EXPORTER": "zipkin"}, "OTEL_METRICS_EXPORTER: expected prometheus, otlp"),
    ([], {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "OTEL_EXPORTER_OTLP_PROTOCOL: expected one of http/protobuf, grpc: 'http/json'"),
    ([], {"OTEL_METRIC_EXPORT_INTERVAL": "soon"},
     "OTEL_METRIC_EXPORT_INTERVAL: expected milliseconds: 'soon'"),
])
def test_bad_outputs_settings_exit_2_naming_the_setting_and_the_value(
    argv: list[str], environ: dict[str, str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        config_from_args(argv, environ)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_standard_variables_apply_when_ours_are_unset() -> None:
    standard = {
        "OTEL_METRICS_EXPORTER": "prometheus,otlp",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc",  # the signal's own wins
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "DELTA",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",  # milliseconds
    }
    config = config_from_args([], standard)
    assert config.metrics_exporters == ("prometheus", "otlp")
    assert (config.otlp_protocol, config.otlp_temporality) == ("grpc", "delta")
    assert config.otlp_export_interval == 5.0
    ours = {**standard, env_name("metrics_exporters"): "otlp", env_name("otlp_protocol"):
            "http/protobuf"}
    config = config_from_args(["--otlp-export-interval=2"], ours)
    assert config.metrics_exporters == ("otlp",)
    assert (config.otlp_protocol, config.otlp_export_interval) == ("http/protobuf", 2.0)
    assert config_from_args([], {}).metrics_exporters == ("prometheus",)


def test_service_name_is_ours_unless_the_standard_variables_name_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
    resource = exporter_resource()
    assert resource.attributes["service.name"] == "otel-celery-exporter"
    assert resource.attributes["deployment.environment"] == "prod"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "celery-events")
    assert exporter_resource().attributes["service.name"] == "celery-events"


class Recording(MetricExporter):
    """Keeps what the periodic reader exports (a real SDK reader, our exporter object)."""

    def __init__(self, temporality: dict[type, AggregationTemporality]) -> None:
        super().__init__(preferred_temporality=temporality)
        self.batches: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000,
               **kwargs: object) -> MetricExportResult:
        self.batches.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout: float = 30_000, **kwargs: object) -> None:
        pass

    def points(self, name: str) -> list[tuple[dict[str, object], float]]:
        out = []
        for batch in self.batches:
            for rm in batch.resource_metrics:
                for sm in rm.scope_metrics:
                    for metric in sm.metrics:
                        if metric.name == name:
                            out += [(dict(p.attributes or {}),
                                     p.value if hasattr(p, "value") else p.count)
                                    for p in metric.data.data_points]
        return out


def _exporter(clock: FakeClock, exporters: Sequence[str], temporality: str = "cumulative",
              ) -> tuple[Exporter, list[Recording]]:
    config = ExporterConfig(broker_url="redis://127.0.0.1:1/0",
                            metrics_exporters=tuple(exporters), otlp_temporality=temporality,
                            static_labels=(("team", "payments"), ("env", "prod")))
    registry = CollectorRegistry()
    made: list[Recording] = []

    def recording() -> Recording:
        made.append(Recording(preferred_temporality(temporality)))
        return made[-1]

    outputs = Outputs(config, registry, otlp_exporter=recording,
                      resource=Resource({"service.name": "otel-celery-exporter"}))
    return Exporter(config, registry=registry, clock=clock, outputs=outputs), made


def _flush(exporter: Exporter) -> None:
    exporter.instruments.histogram_provider.force_flush()
    exporter.instruments._observable_provider.force_flush()


def test_both_outputs_carry_the_same_series_with_the_static_labels(clock: FakeClock) -> None:
    exporter, otlp = _exporter(clock, ["prometheus", "otlp"])
    try:
        feed(exporter, lifecycle("t1"))
        text = scrape(exporter)
        promtool_check(text)
        celery = [(n, labels) for n, labels, _ in samples(text) if n.startswith("celery_")]
        assert celery, text
        assert all(labels.get("team") == "payments" and labels.get("env") == "prod"
                   for _, labels in celery), celery
        _flush(exporter)
        assert len(otlp) == 2  # one periodic reader per meter provider
        tasks = otlp[1].points(mt.TASKS.name)
        assert tasks == [({"task_name": "app.add", "queue": "default", "state": "SUCCESS",
                           "team": "payments", "env": "prod"}, 1)]
        (runtime_attrs, count), = otlp[0].points(mt.TASK_RUNTIME.name)
        assert (runtime_attrs["team"], count) == ("payments", 1)
    finally:
        exporter.instruments.shutdown()


def test_otlp_alone_serves_no_registry_and_delta_sends_each_task_once(clock: FakeClock) -> None:
    exporter, otlp = _exporter(clock, ["otlp"], temporality="delta")
    try:
        assert list(exporter.registry.collect()) == []
        feed(exporter, lifecycle("t1"))
        _flush(exporter)
        feed(exporter, lifecycle("t2"))
        _flush(exporter)
        values = [v for _, v in otlp[1].points(mt.TASKS.name)]
        assert values == [1, 1]
        # A rebuilt provider would start its deltas from zero and send the total again.
        assert exporter.instruments.rebuild_observables() is False
        _flush(exporter)
        assert sum(v for _, v in otlp[1].points(mt.TASKS.name)) == 2
    finally:
        exporter.instruments.shutdown()


def test_a_missing_otlp_extra_exits_2_with_the_pip_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from otel_celery_metrics.exporter import outputs

    monkeypatch.setitem(outputs._EXPORTER_MODULES, "grpc", ("no_such_otlp_exporter", "otlp-grpc"))
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--metrics-exporters=otlp", "--otlp-protocol=grpc"], {})
    assert exc.value.code == 2
    assert "pip install 'otel-celery-metrics[otlp-grpc]'" in capsys.readouterr().err
