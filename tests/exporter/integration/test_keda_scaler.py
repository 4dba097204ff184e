"""The exporter's KEDA external scaler (--keda-scaler-port) on real Redis, through a gRPC
client generated in the test from KEDA's own externalscaler.proto (the copy in the Go module
cache that scripts/setup fills when it builds tools/manifest-check)."""

from __future__ import annotations

import importlib
import math
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from tests.exporter.integration.conftest import ExporterProc, free_port, producer
from tests.support import REPO, unique_queue, wait_for

pytestmark = pytest.mark.integration


def keda_proto() -> Path:
    go_mod = (REPO / "tools" / "manifest-check" / "go.mod").read_text()
    version = re.search(r"github.com/kedacore/keda/v2 (v\S+)", go_mod)
    assert version, "tools/manifest-check/go.mod names no KEDA version"
    cache = subprocess.run(["go", "env", "GOMODCACHE"], capture_output=True, text=True,
                           check=True).stdout.strip()
    proto = (Path(cache) / "github.com" / "kedacore" / "keda" / f"v2@{version.group(1)}" /
             "pkg" / "scalers" / "externalscaler" / "externalscaler.proto")
    if not proto.exists():
        pytest.fail(f"{proto} missing: scripts/setup downloads it (tools/manifest-check)")
    return proto


def generated_client(tmp: Path) -> tuple[ModuleType, ModuleType]:
    """externalscaler_pb2 and _pb2_grpc, generated now by grpc_tools.protoc."""
    proto = keda_proto()
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}",
                    f"--python_out={tmp}", f"--grpc_python_out={tmp}", proto.name],
                   check=True, capture_output=True)
    sys.path.insert(0, str(tmp))
    try:
        return (importlib.import_module("externalscaler_pb2"),
                importlib.import_module("externalscaler_pb2_grpc"))
    finally:
        sys.path.remove(str(tmp))


def test_the_scaler_answers_keda_from_the_exporters_view(redis_url: str, tmp_path: Path) -> None:
    pb2, pb2_grpc = generated_client(tmp_path)
    busy, empty = unique_queue("keda-busy"), unique_queue("keda-empty")
    port = free_port()
    exporter = ExporterProc(redis_url, f"--queues={busy},{empty}", f"--keda-scaler-port={port}")
    try:
        app = producer(redis_url)
        for _ in range(6):  # no worker consumes it: 6 messages wait in Redis
            app.send_task("exp.ok", queue=busy, routing_key=busy)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb2_grpc.ExternalScalerStub(channel)

        def ref(queue: str, **meta: str) -> Any:
            return pb2.ScaledObjectRef(name="workers", namespace="default", scalerMetadata={
                "queue": queue, "processesPerReplica": "2", **meta})

        def value(queue: str) -> float:
            reply = stub.GetMetrics(pb2.GetMetricsRequest(scaledObjectRef=ref(queue),
                                                          metricName="celery"), timeout=5)
            return float(reply.metricValues[0].metricValueFloat)

        wait_for(lambda: value(busy) == 3, timeout=20, what="6 outstanding / 2 processes")
        (spec,) = stub.GetMetricSpec(ref(busy), timeout=5).metricSpecs
        assert spec.targetSizeFloat == 1 and spec.metricName == f"celery-outstanding-{busy}"
        assert math.ceil(value(busy) / spec.targetSizeFloat) == 3  # KEDA's replicas
        assert stub.IsActive(ref(busy), timeout=5).result is True
        assert next(iter(stub.StreamIsActive(ref(busy), timeout=5))).result is True
        # An empty queue: 0, inactive (KEDA may scale it to zero).
        assert value(empty) == 0
        assert stub.IsActive(ref(empty), timeout=5).result is False
        # Bad metadata and unknown queues are errors, never a 0.
        with pytest.raises(grpc.RpcError) as bad:
            stub.IsActive(ref(busy, processesPerReplica="zero"), timeout=5)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "scalerMetadata.processesPerReplica must be a number > 0: 'zero'" in str(
            bad.value.details())
        with pytest.raises(grpc.RpcError) as unknown:
            stub.IsActive(ref("never-probed"), timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        exporter.stop()


def test_a_bad_scaler_port_is_a_configuration_error() -> None:
    result = subprocess.run([sys.executable, "-m", "otel_celery_metrics.exporter.cli",
                             "--keda-scaler-port=grpc"], capture_output=True, text=True,
                            check=False, timeout=60)
    assert result.returncode == 2
    assert "--keda-scaler-port" in result.stderr and "'grpc'" in result.stderr
