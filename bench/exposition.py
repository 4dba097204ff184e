"""Prometheus exposition: size and render time of the same series on three paths.

For N attribute sets (task_name x queue) of one counter and one histogram (our default
12 buckets), render the ``/metrics`` text with

  (a) OpenTelemetry's Prometheus reader with ``otel_scope_*`` labels (its default),
  (b) the same reader without scope labels (our default under opentelemetry-instrument),
  (c) prometheus_client instruments directly (the baseline, its defaults),
  (d) prometheus_client without its ``_created`` series (``disable_created_metrics()``),

and report medians of several rounds plus the ratios to (c). The OTel render includes
the SDK collection a scrape triggers, because a scrape pays for it.

Then show the two cardinality guards side by side: the SDK folding everything past its
2,000 attribute sets per metric into one ``otel_metric_overflow="true"`` series (no
warning), and our Recorder's series cap (1,500 by default) folding into ``__overflow__``
and counting it in ``otel_celery_metrics_overflow_total``.

    python bench/exposition.py [--series 2000 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from otel_celery_metrics.core import metric_table as mt

BUCKETS = mt.DEFAULT_SECONDS_BUCKETS
QUEUES = 10


def _attribute_sets(n: int) -> list[dict[str, str]]:
    return [{"task_name": f"app.tasks.task_{i // QUEUES}", "queue": f"q{i % QUEUES}"}
            for i in range(n)]


def _otel_registry(n: int, scope_labels: bool) -> CollectorRegistry:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
    from opentelemetry.sdk.resources import Resource

    registry = CollectorRegistry()
    reader = PrometheusMetricReader(
        scope_info_enabled=scope_labels,
        registry=registry,
        # Lift the SDK's 2,000 limit so both paths expose all N series.
        cardinality_limits={Counter: n + 10, Histogram: n + 10},
    )
    provider = MeterProvider(
        resource=Resource.create({"service.name": "bench"}), metric_readers=[reader]
    )
    meter = provider.get_meter("otel_celery_metrics", "0.1.0")
    counter = meter.create_counter(
        mt.TASKS.name, unit=mt.TASKS.unit, description=mt.TASKS.description
    )
    histogram = meter.create_histogram(
        mt.TASK_RUNTIME.name,
        unit=mt.TASK_RUNTIME.unit,
        description=mt.TASK_RUNTIME.description,
        explicit_bucket_boundaries_advisory=BUCKETS,
    )
    for i, attrs in enumerate(_attribute_sets(n)):
        counter.add(1, {**attrs, "state": "SUCCESS"})
        histogram.record((i % 100) / 10.0, attrs)
    return registry


def _client_registry(n: int) -> CollectorRegistry:
    from prometheus_client import Counter, Histogram

    registry = CollectorRegistry()
    counter = Counter(
        "celery_tasks", mt.TASKS.description, ["task_name", "queue", "state"],
        registry=registry,
    )
    histogram = Histogram(
        "celery_task_runtime_seconds", mt.TASK_RUNTIME.description, ["task_name", "queue"],
        buckets=BUCKETS, registry=registry,
    )
    for i, attrs in enumerate(_attribute_sets(n)):
        counter.labels(attrs["task_name"], attrs["queue"], "SUCCESS").inc()
        histogram.labels(attrs["task_name"], attrs["queue"]).observe((i % 100) / 10.0)
    return registry


def _render(registry: CollectorRegistry, created: bool) -> tuple[int, float]:
    """(bytes, seconds) of one render of ``registry``."""
    import prometheus_client

    if created:
        prometheus_client.enable_created_metrics()
    else:
        prometheus_client.disable_created_metrics()
    try:
        start = time.perf_counter()
        body = generate_latest(registry)
        return len(body), time.perf_counter() - start
    finally:
        prometheus_client.enable_created_metrics()


def _measure(
    registries: list[tuple[CollectorRegistry, bool]], rounds: int
) -> list[tuple[int, float]]:
    """(bytes, median seconds) per registry. Rounds are interleaved across the paths so
    that noise from the rest of the machine hits every path alike."""
    for registry, created in registries:
        _render(registry, created)  # warm-up: the first collection creates SDK state
    times: list[list[float]] = [[] for _ in registries]
    sizes = [0] * len(registries)
    for _ in range(rounds):
        for i, (registry, created) in enumerate(registries):
            sizes[i], seconds = _render(registry, created)
            times[i].append(seconds)
    return [(size, statistics.median(t)) for size, t in zip(sizes, times, strict=True)]


def _series(body: str, family: str) -> int:
    return len(re.findall(rf"^{family}(?:_total)?{{", body, flags=re.MULTILINE))


def exposition_table(sizes: list[int], rounds: int) -> None:
    print(f"Exposition of a counter + a {len(BUCKETS)}-bucket histogram, N attribute sets "
          f"each; median of {rounds} renders")
    header = f"{'N':>6}  {'path':<34} {'bytes':>10} {'ms':>9} {'size/c':>7} {'time/c':>7}"
    print(header)
    print("-" * len(header))
    for n in sizes:
        paths: list[tuple[str, Callable[[], CollectorRegistry], bool]] = [
            ("(a) OTel reader, scope labels", lambda n=n: _otel_registry(n, True), True),
            ("(b) OTel reader, no scope labels", lambda n=n: _otel_registry(n, False), True),
            ("(c) prometheus_client", lambda n=n: _client_registry(n), True),
            ("(d) prometheus_client, no _created", lambda n=n: _client_registry(n), False),
        ]
        measured = _measure([(build(), created) for _name, build, created in paths], rounds)
        results = [(name, *m) for (name, _b, _c), m in zip(paths, measured, strict=True)]
        base_size, base_time = results[2][1], results[2][2]
        for name, size, seconds in results:
            print(f"{n:>6}  {name:<34} {size:>10,} {seconds * 1000:>9.1f} "
                  f"{size / base_size:>7.2f} {seconds / base_time:>7.2f}")
        (_, a_size, a_time), (_, b_size, b_time) = results[0], results[1]
        print(f"{n:>6}  scope labels cost: +{(a_size / b_size - 1) * 100:.0f} % bytes, "
              f"{a_time / b_time:.2f}x render time vs (b)")


def overflow_demo(distinct: int) -> None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    from otel_celery_metrics.recording.recorder import Recorder
    from otel_celery_metrics.recording.settings import Settings

    print(f"\nCardinality guards, {distinct:,} distinct task names into celery_tasks_total")

    # The SDK alone: a default reader, instruments fed directly.
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    counter = provider.get_meter("bench").create_counter(mt.TASKS.name, unit=mt.TASKS.unit)
    for i in range(distinct):
        counter.add(1, {"task_name": f"t{i}", "queue": "q", "state": "SUCCESS"})
    body = generate_latest(registry).decode()
    overflow = re.search(r'^celery_tasks_total\{[^}]*otel_metric_overflow="true"[^}]*\} (\S+)',
                         body, flags=re.MULTILINE)
    print(f"  SDK default limit: {_series(body, 'celery_tasks')} series, of which "
          f'otel_metric_overflow="true" holds {overflow.group(1) if overflow else "nothing"}; '
          "no task_name on it, no log line, no counter")

    # Our Recorder in front (task-name cap lifted so the series cap is what acts).
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(scope_info_enabled=False, registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    settings = Settings(max_task_names=100_000)
    recorder = Recorder(provider.get_meter("otel_celery_metrics"), settings)
    index = mt.METRIC_INDEX[mt.TASKS.name]
    for i in range(distinct):
        recorder.emit(index, 1, (f"t{i}", "q", "SUCCESS"))
    body = generate_latest(registry).decode()
    folded = re.search(r'^celery_tasks_total\{[^}]*task_name="__overflow__"[^}]*\} (\S+)',
                       body, flags=re.MULTILINE)
    counted = re.search(r'^otel_celery_metrics_overflow_total\{attribute="series"\} (\S+)',
                        body, flags=re.MULTILINE)
    print(f"  our series cap ({settings.max_series_per_metric}): "
          f"{_series(body, 'celery_tasks')} series, of which task_name=\"__overflow__\" holds "
          f"{folded.group(1) if folded else 'nothing'}; "
          f"otel_celery_metrics_overflow_total{{attribute=\"series\"}} = "
          f"{counted.group(1) if counted else 'missing'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--overflow-distinct", type=int, default=2500)
    args = parser.parse_args()
    exposition_table(args.series, args.rounds)
    overflow_demo(args.overflow_distinct)


if __name__ == "__main__":
    main()
