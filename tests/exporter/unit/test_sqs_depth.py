"""SQS specifics that need no server: kombu's queue naming, and asking kombu's transport
whether events can arrive (probe-only mode)."""

from __future__ import annotations

import pytest
from celery import Celery
from kombu.transport.SQS import Channel

from otel_celery_metrics.exporter.capabilities import detect
from otel_celery_metrics.exporter.sqs_depth import sqs_queue_name


@pytest.mark.parametrize(
    ("queue", "prefix"),
    [("celery", ""), ("media.images", ""), ("media.images", "prod-"), ("a:b/c@d", "p_"),
     ("jobs.fifo", "x."), ("orders.eu.fifo", "")],
)
def test_the_sqs_name_is_the_one_kombu_gives_the_queue(queue: str, prefix: str) -> None:
    # entity_name reads nothing of the channel: called unbound, it is kombu's own rule.
    assert sqs_queue_name(queue, prefix) == Channel.entity_name(None, prefix + queue)


def test_dots_become_dashes_and_the_prefix_comes_first() -> None:
    assert sqs_queue_name("media.images", "prod-") == "prod-media-images"


@pytest.mark.parametrize(
    ("url", "events"),
    [("sqs://k:s@localhost:9324", False), ("redis://localhost:6379/0", True),
     ("amqp://guest:guest@localhost:5672//", True), ("memory://", True)],
)
def test_kombu_says_which_transports_carry_events(url: str, events: bool) -> None:
    app = Celery("t", broker=url, set_as_current=False)
    found = detect(app)
    assert found.events is events
    assert ("probe-only mode" in found.describe()) is not events
