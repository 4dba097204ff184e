"""Publish synthetic Celery task events to Redis at full speed (or a fixed rate).

The events are what Celery 5 workers and producers put on the bus, field for field:
kombu's Redis envelope (JSON, body base64), published on ``/{db}.celeryev/<routing
key>``. Every task makes a task-sent (producer host), task-received, task-started and
task-succeeded or task-failed (worker host), spread over many task names, queues and
worker hostnames; workers also send heartbeats. ``--churn`` renames the worker fleet
every N tasks, as autoscaled pods do.

Counting only the task events (4 per task), an exporter that loses nothing shows
``sum(celery_task_{sent,received,started,succeeded,failed}_total) == 4 * tasks``.

    python bench/exporter_publisher.py --redis-url redis://127.0.0.1:6390/0 --tasks 100000
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import time
import uuid
from collections.abc import Iterator

import redis

TASK_EVENTS_PER_TASK = 4


def envelope(event: dict[str, object], routing_key: str) -> bytes:
    body = base64.b64encode(json.dumps(event).encode()).decode()
    return json.dumps({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": event.get("hostname", "")},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


def _common(kind: str, hostname: str, ts: float, pid: int, clock: int) -> dict[str, object]:
    return {"type": kind, "hostname": hostname, "timestamp": ts, "utcoffset": 0,
            "pid": pid, "clock": clock, "local_received": ts}


def task_messages(
    tasks: int, names: int, hosts: int, queues: int, churn: int, *, seed: int = 1
) -> Iterator[tuple[str, bytes]]:
    """(routing key, payload) for ``tasks`` task lifecycles plus heartbeats."""
    rnd = random.Random(seed)  # noqa: S311 - synthetic, reproducible data
    task_names = [f"app.module{i % 17}.task_{i}" for i in range(names)]
    queue_names = [f"queue-{i}" for i in range(queues)] or ["celery"]
    clock = 0
    for n in range(tasks):
        generation = n // churn if churn else 0
        worker = f"celery@worker-{n % hosts}-g{generation}"
        producer = f"web-{n % 7}"
        pick = rnd.randrange(names)
        name = task_names[pick]
        queue = queue_names[pick % len(queue_names)]  # tasks are routed to one queue each
        task_id = str(uuid.UUID(int=rnd.getrandbits(128), version=4))
        now = time.time()
        clock += 4
        sent = _common("task-sent", producer, now, 100, clock)
        sent.update(uuid=task_id, name=name, args="(1, 2)", kwargs="{'x': 3}", retries=0,
                    eta=None, expires=None, queue=queue, exchange="", routing_key=queue,
                    root_id=task_id, parent_id=None)
        yield "task.sent", envelope(sent, "task.sent")
        received = _common("task-received", worker, now, 200, clock + 1)
        received.update(uuid=task_id, name=name, args="(1, 2)", kwargs="{'x': 3}",
                        root_id=task_id, parent_id=None, retries=0, eta=None, expires=None)
        yield "task.received", envelope(received, "task.received")
        started = _common("task-started", worker, now + 0.001, 201, clock + 2)
        started["uuid"] = task_id
        yield "task.started", envelope(started, "task.started")
        if rnd.random() < 0.05:
            failed = _common("task-failed", worker, now + 0.02, 201, clock + 3)
            failed.update(uuid=task_id, exception="ValueError('bad input')",
                          traceback="Traceback (most recent call last): ...")
            yield "task.failed", envelope(failed, "task.failed")
        else:
            done = _common("task-succeeded", worker, now + 0.02, 201, clock + 3)
            done.update(uuid=task_id, result="'ok'", runtime=0.019)
            yield "task.succeeded", envelope(done, "task.succeeded")
        if n % 7 == 0:  # coprime with the host count: every host beats, about every 350 tasks
            beat = _common("worker-heartbeat", worker, now, 200, clock)
            beat.update(freq=2.0, active=1, processed=n, loadavg=[0.5, 0.4, 0.3],
                        sw_ident="py-celery", sw_ver="5.6.0", sw_sys="Linux")
            yield "worker.heartbeat", envelope(beat, "worker.heartbeat")


def publish(url: str, messages: Iterator[tuple[str, bytes]], rate: float, batch: int = 500) -> int:
    """Publish everything; ``rate`` > 0 paces to that many messages per second."""
    client = redis.Redis.from_url(url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    prefix = f"/{db}.celeryev/"
    sent = 0
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    pending = 0
    for routing_key, payload in messages:
        pipe.publish(prefix + routing_key, payload)
        pending += 1
        if pending >= batch:
            pipe.execute()
            sent += pending
            pending = 0
            if rate > 0:
                ahead = sent / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the publisher, not waiting on a result
    if pending:
        pipe.execute()
        sent += pending
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6390/0")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0, help="messages/s; 0 = full speed")
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--queues", type=int, default=5)
    parser.add_argument("--churn", type=int, default=0, help="rename workers every N tasks")
    args = parser.parse_args()
    t0 = time.perf_counter()
    n = publish(args.redis_url, task_messages(args.tasks, args.names, args.hosts, args.queues,
                                              args.churn), args.rate)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"messages": n, "seconds": round(elapsed, 2),
                      "messages_per_s": round(n / elapsed)}))


if __name__ == "__main__":
    main()
