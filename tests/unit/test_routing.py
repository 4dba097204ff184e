"""Where the queue label comes from: the consume hook, binding matching, the producer's
resolved queue. Real kombu (its in-memory transport) where a broker is involved."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.entity import Queue as EntityQueue

from otel_celery_metrics.core.routing import (
    DELIVERED_FROM,
    binding_matches,
    delivered_queue,
    published_queue,
    topic_matches,
)
from otel_celery_metrics.worker.consume_hook import ConsumeHook


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("images.#", "images.resize.user0", True),
        ("images.#", "images", True),
        ("images.*", "images.resize.user0", False),
        ("*.resize.*", "images.resize.u1", True),
        ("a.#.z", "a.z", True),
        ("a.#.z", "a.b.c.z", True),
        ("a.#.z", "a.b.c", False),
        ("#", "anything.at.all", True),
        ("a.b", "a.c", False),
    ],
)
def test_topic_bindings_follow_amqp_rules(pattern: str, key: str, matches: bool) -> None:
    assert topic_matches(pattern, key) is matches


def test_headers_bindings_match_all_or_any() -> None:
    binding = {"x-match": "all", "kind": "image", "size": "big"}
    assert binding_matches("headers", "", binding, "rk", {"kind": "image", "size": "big"})
    assert not binding_matches("headers", "", binding, "rk", {"kind": "image"})
    anyof = {"x-match": "any", "kind": "image", "size": "big"}
    assert binding_matches("headers", "", anyof, "rk", {"kind": "image"})
    assert binding_matches("fanout", "", None, "whatever", None)
    assert binding_matches("x-plugin-type", "", None, "rk", None) is None


MEDIA = Exchange("media", type="topic")
IMAGES = Queue("images", MEDIA, routing_key="images.#")


@pytest.mark.parametrize(
    ("declare", "exchange", "routing_key", "headers", "expected"),
    [
        # Celery's direct routing: anonymous exchange, routing key = queue name.
        ([Queue("feeds")], "", "feeds", {}, "feeds"),
        # A topic route: the queue's binding takes the producer's key.
        ([IMAGES], "media", "images.resize.user0", {}, "images"),
        # An explicit exchange/routing key that bypasses the resolved (default) queue.
        ([Queue("celery")], "media", "images.resize.user0", {}, "dq"),
        ([IMAGES], "media", "videos.encode", {}, "dq"),
        # Headers exchange.
        ([Queue("big", Exchange("hx", type="headers"), binding_arguments={"kind": "img"})],
         "hx", "ignored.user7", {"kind": "img"}, "big"),
        # Fanout: every bound queue gets a copy; the resolved one is the label.
        ([Queue("fan-a", Exchange("fan", type="fanout"))], "fan", "user9", {}, "fan-a"),
        # Nothing resolved (declare=[] or None): never the routing key.
        ([], "media", "images.resize.user0", {}, "dq"),
        (None, "", "some-queue", {}, "dq"),
    ],
)
def test_the_producer_labels_the_resolved_queue_only_when_the_message_reaches_it(
    declare: Any, exchange: str, routing_key: str, headers: dict[str, Any], expected: str
) -> None:
    assert published_queue(declare, exchange, routing_key, headers, "dq") == expected


def test_consumers_stamp_the_queue_a_message_came_from_not_its_routing_key() -> None:
    hook = ConsumeHook()
    assert hook.install()
    try:
        with Connection("memory://") as conn:
            channel = conn.channel()
            queues = [
                Queue("images", MEDIA, routing_key="images.#"),
                Queue("videos", MEDIA, routing_key="videos.#"),
            ]
            got: list[tuple[str, str]] = []

            def on_message(body: Any, message: Any) -> None:
                got.append((delivered_queue(message.delivery_info, "unknown"),
                            message.delivery_info["routing_key"]))
                message.ack()

            with Consumer(channel, queues, callbacks=[on_message]):
                producer = Producer(channel)
                for key in ("images.resize.user0", "videos.encode.user1", "images.x.user2"):
                    producer.publish({"k": key}, exchange=MEDIA, routing_key=key,
                                     declare=queues)
                for _ in range(3):
                    conn.drain_events(timeout=2)
    finally:
        hook.uninstall()
    assert sorted(got) == [
        ("images", "images.resize.user0"),
        ("images", "images.x.user2"),
        ("videos", "videos.encode.user1"),
    ]
    assert not hasattr(EntityQueue.consume, "__wrapped__")  # uninstalled


def test_without_the_hook_a_delivery_carries_no_queue() -> None:
    assert delivered_queue({"routing_key": "images.resize.user0"}, "unknown") == "unknown"
    assert delivered_queue({DELIVERED_FROM: "images"}, "unknown") == "images"
    assert delivered_queue(None, "unknown") == "unknown"


def test_inspect_replies_give_each_queue_its_bindings() -> None:
    from otel_celery_metrics.core.routing import Binding, bindings_from_reply, sent_destination

    topic = IMAGES.as_dict(recurse=True)  # the shape of an active_queues reply
    headers = Queue("big", Exchange("hx", type="headers"),
                    binding_arguments={"x-match": "all", "kind": "img"}).as_dict(recurse=True)
    known = {"images": bindings_from_reply(topic), "big": bindings_from_reply(headers)}
    assert known["images"] == (Binding("media", "topic", "images.#"),)
    assert sent_destination("celery", "media", "images.x.user3", known) == "images"
    # task-sent carries no message headers: a headers binding cannot be checked.
    assert sent_destination("big", "hx", "user4", known) == "big"
    assert sent_destination(None, "hx", "user4", known) is None
    assert sent_destination("q", None, None, known) == "q"  # no exchange in the event
