"""What TLS costs the exporter's RabbitMQ receiver: CPU per event over amqps:// vs amqp://.

One private RabbitMQ node listens on both (the test suite's ``PrivateRabbitMQ`` and its
throw-away CA). Each round drains the same backlog twice, once per URL, with
:func:`exporter_bench.run_once`: the exporter is stopped while ``--events`` task events are
published over plain AMQP into its queue, then resumed. Prints each run, then the median
CPU-s per 10k events of each and their ratio (the drain rate is only as fine as the
5 s scrape interval, so CPU is the figure to compare).

    python bench/amqps_cost.py --events 400000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import exporter_bench as eb  # noqa: E402 - after the path above

from tests.exporter.integration.private_rabbitmq import PrivateRabbitMQ  # noqa: E402
from tests.tls_certs import make_tls_files  # noqa: E402


class _Plain:
    """What run_once needs from a broker: the URL the publisher writes to."""

    def __init__(self, url: str) -> None:
        self.url = url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--multi", type=int, default=1)
    args = parser.parse_args()
    tls = make_tls_files(Path(tempfile.mkdtemp(prefix="amqps-bench-")) / "tls")
    node = PrivateRabbitMQ(tls)
    node.start()
    base = (f"{sys.executable} -m otel_celery_metrics.exporter.cli --port={{port}} "
            "--log-level=WARNING --worker-forget-after=5 --worker-timeout=3")
    templates = {
        "amqp": f"{base} --broker-url={{broker}}",
        "amqps": f"{base} --broker-url={node.tls_url} --broker-tls-ca-file={tls.ca}",
    }
    cpu: dict[str, list[float]] = {name: [] for name in templates}
    try:
        for _ in range(args.rounds):
            for name, template in templates.items():
                result = eb.run_once(template, args.events // eb.TASK_EVENTS_PER_TASK, 0,
                                     rabbitmq=_Plain(node.url), stall=True, sample_rss=True,  # type: ignore[arg-type]
                                     multi=args.multi, scrape_every=5)
                keep = ("shown", "lost", "drain_events_per_s", "cpu_s_per_10k", "peak_rss_mb")
                print(name, json.dumps({k: result[k] for k in keep}), flush=True)
                cpu[name].append(float(result["cpu_s_per_10k"]))  # type: ignore[arg-type]
    finally:
        node.stop()
        node.cleanup()
    medians = {name: statistics.median(values) for name, values in cpu.items()}
    print(json.dumps({"cpu_s_per_10k_median": medians,
                      "amqps_over_amqp": round(medians["amqps"] / medians["amqp"], 2)}))


if __name__ == "__main__":
    main()
