"""A Celery app routed the ways Celery's routing guide shows, for the queue-label tests.

Queue and exchange names start with ROUTING_TEST_PREFIX (one fresh prefix per test):

- ``<p>-images`` bound to the topic exchange ``<p>-media`` with ``images.#``; producers
  publish with routing keys such as ``images.resize.user0`` (a user id: never a label);
- ``<p>-feeds``, a plain direct queue reached through ``task_routes``;
- ``<p>-big`` bound to the headers exchange ``<p>-hx`` (``kind=image``), RabbitMQ only
  (kombu's Redis transport has no headers exchange).

The broker comes from TEST_BROKER_URL. Task-sent and task events are on, so the
standalone exporter sees the same workload.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

PREFIX = os.environ.get("ROUTING_TEST_PREFIX", "rt")


def configure(app: Celery, prefix: str) -> None:
    """The routing both the workers and the test's producer use."""
    media = Exchange(f"{prefix}-media", type="topic")
    queues = [
        Queue(f"{prefix}-images", media, routing_key="images.#"),
        Queue(f"{prefix}-feeds", Exchange(f"{prefix}-feeds"), routing_key=f"{prefix}-feeds"),
    ]
    if not str(app.conf.broker_url).startswith("redis"):
        queues.append(Queue(
            f"{prefix}-big", Exchange(f"{prefix}-hx", type="headers"),
            binding_arguments={"x-match": "all", "kind": "image"},
        ))
    app.conf.update(
        task_queues=queues,
        task_default_queue=f"{prefix}-feeds",
        task_routes=[{"routing.feed": {"queue": f"{prefix}-feeds"}}, _route_resize(prefix)],
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )


def _route_resize(prefix: str) -> Any:
    def route(name: str, args: Any, kwargs: Any, options: Any, **_: Any) -> Any:
        # A router function as in Celery's routing guide: the routing key names the user.
        if name == "routing.resize":
            return {"queue": f"{prefix}-images", "routing_key": f"images.route.user{args[0]}"}
        return None

    return route


app = Celery("routing_app", broker=os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/15"))
configure(app, PREFIX)


@app.task(name="routing.work")
def work(x: int = 0) -> int:
    return x


@app.task(name="routing.feed")
def feed(x: int = 0) -> int:
    return x


@app.task(name="routing.resize")
def resize(user: int) -> int:
    return user


@app.task(name="routing.fanout")
def fanout(prefix: str, users: list[int]) -> None:
    """Publishes from inside the worker (an instrumented producer): one message per user,
    to the images queue, with the user id in the routing key."""
    for user in users:
        work.apply_async((user,), queue=f"{prefix}-images", routing_key=f"images.fan.user{user}")


def send_workload(producer: Any, prefix: str, broker_url: str) -> dict[str, Any]:
    """Publish the workload; returns what the worker must count, per (task, queue)."""
    images, feeds, big = f"{prefix}-images", f"{prefix}-feeds", f"{prefix}-big"
    media = f"{prefix}-media"
    for user in range(6):  # explicit queue= with a per-user topic routing key
        producer.send_task("routing.work", (user,), queue=images,
                           routing_key=f"images.resize.user{user}")
    for user in range(10, 14):  # task_routes: a router function picks queue and key
        producer.send_task("routing.resize", (user,))
    for i in range(3):  # task_routes by queue name
        producer.send_task("routing.feed", (i,))
    producer.send_task("routing.fanout", (prefix, [20, 21, 22]), queue=feeds)
    expected = {("routing.work", images): 6 + 3, ("routing.resize", images): 4,
                ("routing.feed", feeds): 3, ("routing.fanout", feeds): 1}
    if not broker_url.startswith("redis"):
        # Explicit exchange= + routing_key=, no queue. (On Redis the exchange's type is
        # known only to clients that declared it: kombu would route this as direct.)
        for user in range(6, 8):
            producer.send_task("routing.work", (user,), exchange=media,
                               routing_key=f"images.crop.user{user}")
        expected[("routing.work", images)] += 2
        for user in range(30, 32):  # headers exchange; the routing key plays no part
            producer.send_task("routing.work", (user,), queue=big,
                               routing_key=f"user{user}", headers={"kind": "image"})
        expected[("routing.work", big)] = 2
    return expected
