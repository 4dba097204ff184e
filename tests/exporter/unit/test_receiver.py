"""Receiver pieces that need no broker: backoff and the unreachable-broker loop."""

from __future__ import annotations

import logging
import threading

import pytest

from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.receiver import Backoff, RedisPubSubReceiver
from tests.exporter.support import wait_for


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_an_unreachable_broker_is_retried_and_logged_masked(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = ExporterConfig(
        broker_url="redis://:topsecret@127.0.0.1:1/3",
        reconnect_initial=0.01,
        reconnect_max=0.02,
        probe_timeout=0.5,
    )
    receiver = RedisPubSubReceiver(config, lambda e: None, lambda k, r, n: None, clock=lambda: 0)
    assert receiver.pattern == "/3.celeryev/*"
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop,))
    with caplog.at_level(logging.WARNING):
        thread.start()
        wait_for(lambda: receiver._backoff.attempts >= 3, 10, "three attempts")
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert not receiver.status.connected
    assert "cannot reach the broker redis://:***@127.0.0.1:1/3" in caplog.text
    assert "topsecret" not in caplog.text


def test_the_event_subscription_follows_kombus_global_keyprefix_literally() -> None:
    config = ExporterConfig(broker_url="redis://127.0.0.1/2", redis_key_prefix="team*a:")
    receiver = RedisPubSubReceiver(config, lambda e: None, lambda k, r, n: None, clock=lambda: 0)
    # kombu publishes to "<global_keyprefix>/<db>.celeryev/<routing key>"; a glob character
    # in the prefix must match only itself.
    assert receiver.pattern == "team\\*a:/2.celeryev/*"
