"""What the autoscaling tests share: the shipped queries (read from the manifests, not
restated), KEDA's and the HPA's replica formula, and a fleet of real processes scraped by a
real Prometheus that evaluates docs/deploy/celery-autoscaling-rules.yml."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.exporter.integration.conftest import ExporterProc
from tests.servers import Prometheus, running_prometheus, scrape_config
from tests.support import REPO, free_port

DEPLOY = REPO / "docs" / "deploy"
RULES = DEPLOY / "celery-autoscaling-rules.yml"
#: The worker Deployment's --concurrency, which the ScaledObject's query divides by.
MANIFEST_CONCURRENCY = 4


@dataclass(frozen=True)
class Trigger:
    query: str
    threshold: float
    activation: float


def keda_triggers(queue: str, concurrency: int) -> list[Trigger]:
    """The ScaledObject's prometheus triggers, for ``queue`` and workers of ``concurrency``."""
    scaled = next(d for d in yaml.safe_load_all((DEPLOY / "autoscaling-keda.yaml").read_text())
                  if d and d["kind"] == "ScaledObject")
    out = []
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        query = meta["query"].replace('queue="celery"', f'queue="{queue}"')
        query = query.replace(f"/ {MANIFEST_CONCURRENCY}", f"/ {concurrency}")
        out.append(Trigger(query, float(meta["threshold"]), float(meta["activationThreshold"])))
    return out


def keda_replicas(values: list[float | None], triggers: list[Trigger], lo: int, hi: int,
                  current: int) -> int:
    """KEDA's decision: 0 (min) when no trigger is above its activation threshold, else the
    HPA's ceil(value / threshold) for AverageValue targets, the largest over the triggers,
    within [max(lo, 1), hi]. A trigger without a value (no data; ignoreNullValues false) is
    an error: the replicas stay as they are."""
    if any(v is None for v in values):
        return current
    known = [float(v) for v in values if v is not None]
    if all(v <= t.activation for v, t in zip(known, triggers, strict=True)):
        return lo
    wanted = max(math.ceil(v / t.threshold) for v, t in zip(known, triggers, strict=True))
    return max(1, lo, min(hi, wanted))


def llen_replicas(length: int, per_replica: int, lo: int, hi: int) -> int:
    """KEDA's redis listLength trigger (or RabbitMQ QueueLength): ceil(length / target)."""
    if length <= 0:
        return lo
    return max(lo, min(hi, math.ceil(length / per_replica)))


def scalar(prom: Prometheus, promql: str) -> float | None:
    """The single value of ``promql`` now (None when empty)."""
    body = json.loads(prom.get("/api/v1/query", query=promql))
    assert body["status"] == "success", (promql, body)
    result = body["data"]["result"]
    if not result:
        return None
    assert len(result) == 1, (promql, result)
    return float(result[0]["value"][1])


def signals(prom: Prometheus, queue: str) -> dict[str, float | None]:
    """The recorded signals of ``queue``: outstanding, scheduled, capacity, load, idle."""
    names = {"outstanding": "outstanding_tasks:sum", "scheduled": "scheduled_tasks:sum",
             "capacity": "capacity_processes:sum", "load": "load:ratio", "idle": "idle:bool"}
    return {key: scalar(prom, f'queue:celery_{n}{{queue="{queue}"}}') for key, n in names.items()}


@dataclass
class Fleet:
    prometheus: Prometheus
    exporter: ExporterProc
    #: Worker metrics ports Prometheus scrapes (a port with no worker is a target down).
    ports: list[int]


@contextmanager
def running_fleet(workdir: Path, broker_url: str, queues: list[str], worker_ports: int,
                  *, interval: str = "1s") -> Iterator[Fleet]:
    """The exporter (probing ``queues``) and Prometheus 3 scraping it and ``worker_ports``
    ports for in-process workers, evaluating the shipped autoscaling rules every second."""
    ports = [free_port() for _ in range(worker_ports)]
    exporter = ExporterProc(broker_url, f"--queues={','.join(queues)}", "--enable-events")
    try:
        with ExitStack() as stack:
            workers: dict[str, Any] = scrape_config(
                "celery", f"127.0.0.1:{ports[0]}", interval=interval)
            workers["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in ports]}]
            prom = stack.enter_context(running_prometheus(
                workdir, "3",
                [workers, scrape_config("celery-exporter", f"127.0.0.1:{exporter.port}",
                                        interval=interval)],
                extra_config={"rule_files": [str(RULES)],
                              "global": {"scrape_interval": interval,
                                         "scrape_timeout": interval,
                                         "evaluation_interval": interval}}))
            yield Fleet(prom, exporter, ports)
    finally:
        exporter.stop()
