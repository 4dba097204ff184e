"""Receiver pieces that need no broker: backoff, the unreachable-broker loop, and what
counts as connected (an answer, not a TCP handshake)."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.exporter.receiver import (
    Backoff,
    RedisPubSubReceiver,
    _Pulse,
    amqp_heartbeat_interval,
)
from tests.exporter.support import FakeClock, wait_for


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


class _SilentRedis:
    """A listening socket that never accepts: the kernel still completes TCP handshakes
    from its backlog, as for a hung Redis. With ``pong`` it accepts instead, answers the
    first PING and then nothing, as a Redis that hangs after the subscription."""

    def __init__(self, *, pong: bool = False) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        if pong:
            threading.Thread(target=self._answer_once, daemon=True).start()

    def _answer_once(self) -> None:
        with contextlib.suppress(OSError):
            conn, _ = self.server.accept()
            self.held.append(conn)
            data = b""
            while b"PING" not in data:
                data += conn.recv(1024)
            conn.sendall(b"+PONG\r\n")  # then silence, the connection left open

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.server.close()


def _run_receiver(config: ExporterConfig) -> tuple[RedisPubSubReceiver, threading.Event,
                                                    threading.Thread]:
    receiver = RedisPubSubReceiver(config, lambda e: None, lambda k, r, n: None, clock=lambda: 0)
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(stop,))
    thread.start()
    return receiver, stop, thread


def test_a_tcp_handshake_without_a_pong_is_never_taken_for_a_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hung = _SilentRedis()
    config = ExporterConfig(broker_url=f"redis://127.0.0.1:{hung.port}/0", probe_timeout=0.2,
                            reconnect_initial=0.01, reconnect_max=0.02)
    seen_connected = []
    with caplog.at_level(logging.INFO):
        receiver, stop, thread = _run_receiver(config)
        try:
            wait_for(lambda: (seen_connected.append(receiver.status.connected)
                              or receiver._backoff.attempts >= 4), 10, "four attempts")
        finally:
            stop.set()
            thread.join(10)
            hung.close()
    assert not any(seen_connected)
    assert receiver.status.reconnects == 0
    assert "connected to the broker" not in caplog.text
    assert "cannot reach the broker" in caplog.text


def test_silence_after_the_pong_is_a_lost_connection_after_the_broker_heartbeat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hangs_later = _SilentRedis(pong=True)
    config = ExporterConfig(broker_url=f"redis://127.0.0.1:{hangs_later.port}/0",
                            probe_timeout=0.5, broker_heartbeat=0.6, reconnect_initial=5,
                            reconnect_max=5)
    with caplog.at_level(logging.INFO):
        receiver, stop, thread = _run_receiver(config)
        try:
            wait_for(lambda: receiver.status.connected, 10, "the PONG")
            up_at = time.monotonic()
            wait_for(lambda: not receiver.status.connected, 10, "the silence to be noticed")
            down_after = time.monotonic() - up_at
        finally:
            stop.set()
            thread.join(10)
            hangs_later.close()
    # 0.6 s of silence (polled every 0.2 s, on a loaded machine); the old fixed schedule
    # took 15 s.
    assert 0.3 <= down_after < 4, down_after
    assert "the broker answered nothing for" in caplog.text
    assert "(--broker-heartbeat)" in caplog.text


def test_the_kombu_pulse_pings_once_per_interval_and_a_failed_ping_raises() -> None:
    clock = FakeClock()
    pings: list[float] = []

    class Client:
        fail = False

        def ping(self) -> bool:
            pings.append(clock())
            if self.fail:
                raise TimeoutError("Timeout reading from socket")
            return True

    client = Client()
    pulse = _Pulse(every=1.0, clock=clock)
    pulse.check()  # nothing watched yet: nothing to ping
    pulse.watch(object(), SimpleNamespace(client=client))
    for _ in range(30):
        clock.advance(0.1)
        pulse.check()
    assert len(pings) == 3
    client.fail = True
    clock.advance(1.0)
    with pytest.raises(TimeoutError):
        pulse.check()
    # RabbitMQ: no client to ping; kombu's heartbeat check at every turn instead.
    checks: list[float] = []
    amqp_conn = SimpleNamespace(supports_heartbeats=True, heartbeat=5,
                                heartbeat_check=lambda: checks.append(clock()))
    pulse.watch(amqp_conn, SimpleNamespace())
    for _ in range(3):
        clock.advance(5)
        pulse.check()
    assert len(checks) == 3
    assert len(pings) == 4


@pytest.mark.parametrize(("broker_heartbeat", "amqp"), [(10, 5), (3, 1), (1, 1), (61, 30)])
def test_two_amqp_heartbeats_fit_in_the_broker_heartbeat(broker_heartbeat: float,
                                                        amqp: int) -> None:
    assert amqp_heartbeat_interval(broker_heartbeat) == amqp
