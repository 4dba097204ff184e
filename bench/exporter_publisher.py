"""Publish synthetic Celery task events to Redis or RabbitMQ at full speed (or a fixed rate).

The events are what Celery 5 workers and producers put on the bus, field for field:
on Redis kombu's envelope (JSON, body base64), published on ``/{db}.celeryev/<routing
key>``; on RabbitMQ the JSON body with Celery's properties, published to the
``celeryev`` topic exchange. The AMQP frames are built here and written over one
channel's socket in large batches (py-amqp's ``basic_publish`` manages about 10k
messages/s here, slower than the exporters it would measure).

Every task makes a task-sent (producer host), task-received, task-started and
task-succeeded or task-failed (worker host), spread over many task names, queues and
worker hostnames; workers also send heartbeats. ``--churn`` renames the worker fleet
every N tasks, as autoscaled pods do. ``--multi N`` sends each worker's task events as
``task.multi`` messages of N events, as a prefork worker does: its event dispatcher
buffers the ``task`` group (up to 24 events, flushed on the next event-loop tick) and
publishes the buffer as one message whose body is a JSON list. Producers' task-sent
events and heartbeats stay one message each, as Celery sends them.

Counting only the task events (4 per task), an exporter that loses nothing shows
``sum(celery_task_{sent,received,started,succeeded,failed}_total) == 4 * tasks``.

    python bench/exporter_publisher.py --redis-url redis://127.0.0.1:6390/0 --tasks 100000
    python bench/exporter_publisher.py --amqp-url amqp://guest:guest@127.0.0.1:5673// --tasks 1000
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import socket
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import unquote, urlsplit

import redis

TASK_EVENTS_PER_TASK = 4


Event = dict[str, object]


def envelope(event: Event | list[Event], routing_key: str) -> bytes:
    body = base64.b64encode(json.dumps(event).encode()).decode()
    first = event[0] if isinstance(event, list) else event
    return json.dumps({
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": first.get("hostname", "")},
        "properties": {
            "delivery_mode": 1,
            "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }).encode()


def amqp_body(event: Event | list[Event], routing_key: str) -> bytes:
    """On AMQP the message body is the event's JSON itself (properties travel apart)."""
    return json.dumps(event).encode()


def _common(kind: str, hostname: str, ts: float, pid: int, clock: int) -> dict[str, object]:
    return {"type": kind, "hostname": hostname, "timestamp": ts, "utcoffset": 0,
            "pid": pid, "clock": clock, "local_received": ts}


def task_messages(
    tasks: int, names: int, hosts: int, queues: int, churn: int, *, seed: int = 1,
    encode: Callable[[Event | list[Event], str], bytes] = envelope, multi: int = 1,
) -> Iterator[tuple[str, bytes, int]]:
    """(routing key, payload, task events in it) for ``tasks`` task lifecycles plus
    heartbeats; with ``multi`` > 1 each worker's task events leave in ``task.multi``
    batches of that many (what is left over at the end, in smaller ones)."""
    buffers: dict[str, list[Event]] = {}

    def worker_event(event: Event, routing_key: str) -> Iterator[tuple[str, bytes, int]]:
        if multi <= 1:
            yield routing_key, encode(event, routing_key), 1
            return
        buf = buffers.setdefault(str(event["hostname"]), [])
        buf.append(event)
        if len(buf) >= multi:
            yield "task.multi", encode(buf, "task.multi"), len(buf)
            buf.clear()

    yield from _lifecycles(tasks, names, hosts, queues, churn, seed, encode, worker_event)
    for buf in buffers.values():
        if buf:
            yield "task.multi", encode(buf, "task.multi"), len(buf)


def _lifecycles(  # noqa: PLR0917 - task_messages' own parameters, passed on
    tasks: int, names: int, hosts: int, queues: int, churn: int, seed: int,
    encode: Callable[[Event | list[Event], str], bytes],
    worker_event: Callable[[Event, str], Iterator[tuple[str, bytes, int]]],
) -> Iterator[tuple[str, bytes, int]]:
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
        yield "task.sent", encode(sent, "task.sent"), 1
        received = _common("task-received", worker, now, 200, clock + 1)
        received.update(uuid=task_id, name=name, args="(1, 2)", kwargs="{'x': 3}",
                        root_id=task_id, parent_id=None, retries=0, eta=None, expires=None)
        yield from worker_event(received, "task.received")
        started = _common("task-started", worker, now + 0.001, 201, clock + 2)
        started["uuid"] = task_id
        yield from worker_event(started, "task.started")
        if rnd.random() < 0.05:
            failed = _common("task-failed", worker, now + 0.02, 201, clock + 3)
            failed.update(uuid=task_id, exception="ValueError('bad input')",
                          traceback="Traceback (most recent call last): ...")
            yield from worker_event(failed, "task.failed")
        else:
            done = _common("task-succeeded", worker, now + 0.02, 201, clock + 3)
            done.update(uuid=task_id, result="'ok'", runtime=0.019)
            yield from worker_event(done, "task.succeeded")
        if n % 7 == 0:  # coprime with the host count: every host beats, about every 350 tasks
            beat = _common("worker-heartbeat", worker, now, 200, clock)
            beat.update(freq=2.0, active=1, processed=n, loadavg=[0.5, 0.4, 0.3],
                        sw_ident="py-celery", sw_ver="5.6.0", sw_sys="Linux")
            yield "worker.heartbeat", encode(beat, "worker.heartbeat"), 0


def _paced(messages: Iterator[tuple[str, bytes, int]], rate: float, batch: int,
           send: Callable[[list[tuple[str, bytes]]], None],
           progress: list[int] | None) -> int:
    """Hand ``messages`` to ``send`` in batches; ``rate`` > 0 paces to that many task events
    per second; ``progress[0]`` follows the task events sent. Returns the messages sent."""
    sent = events = 0
    pending: list[tuple[str, bytes]] = []
    started = time.perf_counter()
    for routing_key, payload, count in messages:
        pending.append((routing_key, payload))
        events += count
        if len(pending) >= batch:
            send(pending)
            sent += len(pending)
            pending = []
            if progress is not None:
                progress[0] = events  # task events handed to the broker so far
            if rate > 0:
                ahead = events / rate - (time.perf_counter() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the publisher, not waiting on a result
    if pending:
        send(pending)
        sent += len(pending)
        if progress is not None:
            progress[0] = events
    return sent


def publish(url: str, messages: Iterator[tuple[str, bytes, int]], rate: float, *,
            batch: int = 500, progress: list[int] | None = None) -> int:
    """Publish everything; ``rate`` > 0 paces to that many task events per second.
    Returns the number of messages."""
    client = redis.Redis.from_url(url)
    db = client.connection_pool.connection_kwargs.get("db", 0)
    prefix = f"/{db}.celeryev/"
    pipe = client.pipeline(transaction=False)

    def send(batch_messages: list[tuple[str, bytes]]) -> None:
        for routing_key, payload in batch_messages:
            pipe.publish(prefix + routing_key, payload)
        pipe.execute()

    return _paced(messages, rate, batch, send, progress)


_FRAME_END = b"\xce"
_CONTENT_TYPE = b"application/json"
_ENCODING = b"utf-8"


def _frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, 1, len(payload)) + payload + _FRAME_END


def amqp_publish_frames(exchange: str, routing_key: str, body: bytes) -> bytes:
    """basic.publish + content header + body on channel 1, as Celery's dispatcher sends:
    content type and encoding, delivery mode 1 (transient)."""
    ex, rk = exchange.encode(), routing_key.encode()
    method = struct.pack(">HHH", 60, 40, 0) + bytes((len(ex),)) + ex + bytes((len(rk),)) + rk \
        + b"\x00"
    props = bytes((len(_CONTENT_TYPE),)) + _CONTENT_TYPE + bytes((len(_ENCODING),)) + _ENCODING \
        + b"\x01"
    header = struct.pack(">HHQH", 60, 0, len(body), 0x8000 | 0x4000 | 0x1000) + props
    return _frame(1, method) + _frame(2, header) + _frame(3, body)


def publish_amqp(url: str, messages: Iterator[tuple[str, bytes, int]], rate: float, *,
                 batch: int = 500, exchange: str = "celeryev",
                 progress: list[int] | None = None) -> int:
    """Publish over one AMQP channel: py-amqp opens it, we write the frames in batches.
    ``rate`` > 0 paces to that many task events per second; returns the messages sent."""
    import amqp

    parts = urlsplit(url)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    conn = amqp.Connection(f"{parts.hostname}:{parts.port or 5672}",
                           userid=unquote(parts.username or "guest"),
                           password=unquote(parts.password or "guest"), virtual_host=vhost)
    conn.connect()
    channel = conn.channel()
    assert channel.channel_id == 1
    channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
    sock = conn.transport.sock
    sock.settimeout(None)
    # py-amqp sets TCP_USER_TIMEOUT (1 s): RabbitMQ's flow control, which stops reading
    # a publisher that outruns it, would then kill the connection instead of pacing it.
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 0)

    def send(batch_messages: list[tuple[str, bytes]]) -> None:
        sock.sendall(b"".join(amqp_publish_frames(exchange, rk, body)
                              for rk, body in batch_messages))

    sent = _paced(messages, rate, batch, send, progress)
    channel.close()  # a round trip: everything written before it has reached the broker
    conn.close()
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6390/0")
    parser.add_argument("--amqp-url", help="publish to RabbitMQ instead of Redis")
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=0,
                        help="task events/s; 0 = full speed")
    parser.add_argument("--names", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--queues", type=int, default=5)
    parser.add_argument("--churn", type=int, default=0, help="rename workers every N tasks")
    parser.add_argument("--multi", type=int, default=1,
                        help="task events per worker message (task.multi); 1 = one each")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.amqp_url:
        n = publish_amqp(args.amqp_url, task_messages(
            args.tasks, args.names, args.hosts, args.queues, args.churn, encode=amqp_body,
            multi=args.multi),
            args.rate)
    else:
        n = publish(args.redis_url, task_messages(
            args.tasks, args.names, args.hosts, args.queues, args.churn, multi=args.multi),
            args.rate)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"messages": n, "seconds": round(elapsed, 2),
                      "messages_per_s": round(n / elapsed)}))


if __name__ == "__main__":
    main()
