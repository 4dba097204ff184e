"""Cost per poll of the exporter's Redis queue probe with 100 queues (issue 22's limit).

One poll is one pipelined round trip: LLEN and LINDEX for every priority list of every
queue (4 steps x 100 queues = 800 commands) plus one HVALS of kombu's unacked hash, whose
entries are parsed and counted per queue (the autoscaling terms celery_queue_unacked and
celery_queue_unacked_scheduled). The unacked hash holds only what workers hold now, so its
size is the fleet's prefetch window; this times polls with the hash empty (the baseline)
and holding 400 and 1,600 entries, in alternating rounds of one run, and prints the median
milliseconds per poll and the ratio to the baseline.

Real Redis (TEST_REDIS_URL, default redis://127.0.0.1:6379/15); every key is under a fresh
prefix and deleted at the end.

    .venv/bin/python bench/queue_probe_cost.py [--polls 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid

import redis

from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.probes import UNACKED_KEY, QueueDepthProbe

QUEUES = 100


def unacked_entry(queue: str, eta: str | None) -> str:
    headers = {"id": uuid.uuid4().hex, "task": "app.work", "eta": eta}
    return json.dumps([{"body": "e30=", "headers": headers, "properties": {}}, queue, queue])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(url)
    names = [f"q{i:03d}" for i in range(QUEUES)]
    config = ExporterConfig(broker_url=url, queues=tuple(names), max_queues=QUEUES,
                            redis_key_prefix=prefix)
    probe = QueueDepthProbe(config, None, set, time.monotonic)
    for name in names[::2]:  # half the queues have a short backlog
        client.rpush(prefix + name, *[unacked_entry(name, None)] * 3)
    sizes = (0, 400, 1600)
    entries = {n: {str(i): unacked_entry(names[i % QUEUES], None if i % 4 else
                                          "2099-01-01T00:00:00+00:00") for i in range(n)}
               for n in sizes}
    times: dict[int, list[float]] = {n: [] for n in sizes}
    try:
        for _ in range(args.rounds):
            for n in sizes:  # alternate: every round measures each size
                client.delete(prefix + UNACKED_KEY)
                if n:
                    client.hset(prefix + UNACKED_KEY, mapping=entries[n])
                probe.poll()  # warm the connection
                start = time.perf_counter()
                for _ in range(args.polls):
                    probe.poll()
                times[n].append((time.perf_counter() - start) / args.polls * 1000)
                assert sum(probe.result.unacked.values()) + sum(
                    probe.result.unacked_scheduled.values()) == n
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
    base = statistics.median(times[0])
    print(f"{QUEUES} queues x {len(config.priority_steps)} priority lists, {args.polls} polls "
          f"x {args.rounds} rounds, one pipelined round trip per poll")
    print("| unacked entries | ms per poll (median) | ratio to empty hash |")
    print("| ---: | ---: | ---: |")
    for n in sizes:
        median = statistics.median(times[n])
        print(f"| {n} | {median:.2f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
