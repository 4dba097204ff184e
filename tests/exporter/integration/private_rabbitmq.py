"""A private rabbitmq-server node a test may stop and start (never the shared one on 5672).

Its own node name, AMQP and distribution ports, data, logs and Erlang cookie, all under
a temp dir; no plugins. ``rabbitmq-server -detached`` starts it (about 20 s here),
``rabbitmqctl -n <node> stop`` stops it, and its data survive a restart.

With ``tls`` it also listens for AMQP over TLS (``tls_url``) with that server certificate;
with ``require_client_cert`` it refuses a client without a certificate that CA signed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.tls_certs import TLSFiles

SBIN = Path(os.environ.get("RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
        return True
    except OSError:
        return False


def available() -> bool:
    return (SBIN / "rabbitmq-server").exists() and (SBIN / "rabbitmqctl").exists()


class PrivateRabbitMQ:
    def __init__(self, tls: TLSFiles | None = None, *, require_client_cert: bool = False
                 ) -> None:
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="test-rabbitmq-"))
        self.node = f"exporter-test-{self.port}@localhost"
        (self.dir / "enabled_plugins").write_text("[].\n")
        self.tls_port = _free_port() if tls else 0
        if tls:
            verify = "verify_peer" if require_client_cert else "verify_none"
            (self.dir / "rabbitmq.conf").write_text(
                f"listeners.ssl.default = 127.0.0.1:{self.tls_port}\n"
                f"ssl_options.cacertfile = {tls.ca}\n"
                f"ssl_options.certfile = {tls.server_cert}\n"
                f"ssl_options.keyfile = {tls.server_key}\n"
                f"ssl_options.verify = {verify}\n"
                f"ssl_options.fail_if_no_peer_cert = {str(require_client_cert).lower()}\n")
        self.env = {
            **os.environ,
            "HOME": str(self.dir),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
        }

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def tls_url(self) -> str:
        # "localhost", as users write it; kombu connects to (and checks the certificate
        # against) 127.0.0.1 instead, which the test certificate carries as an IP address.
        return f"amqps://guest:guest@localhost:{self.tls_port}//"

    def start(self, timeout: float = 90.0) -> None:
        subprocess.run([str(SBIN / "rabbitmq-server"), "-detached"], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers() and (not self.tls_port or _listens(self.tls_port)):
                return
            time.sleep(0.3)  # polling for the node, with a deadline
        msg = f"private rabbitmq-server {self.node} did not answer within {timeout:.0f}s"
        raise RuntimeError(msg)

    def answers(self) -> bool:
        import amqp

        try:
            conn = amqp.Connection(f"127.0.0.1:{self.port}", connect_timeout=1)
            conn.connect()
            conn.close()
            return True
        except Exception:  # noqa: BLE001 - not up (yet)
            return False

    def publish(self, messages: list[tuple[str, str, bytes]], declare: tuple[str, ...] = ()
                ) -> None:
        """``(exchange, routing key, JSON body)`` messages, over plain AMQP, after declaring
        the ``declare`` queues (durable, as Celery's); returns once the node has them all."""
        import amqp

        conn = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest",
                               password="guest")  # noqa: S106 - RabbitMQ's local default
        conn.connect()
        try:
            channel = conn.channel()
            for queue in declare:
                channel.queue_declare(queue, durable=True, auto_delete=False)
            for exchange, routing_key, body in messages:
                channel.basic_publish(
                    amqp.Message(body, content_type="application/json",
                                 content_encoding="utf-8", delivery_mode=1),
                    exchange=exchange, routing_key=routing_key)
            channel.close()  # a round trip: everything published before it has arrived
        finally:
            conn.close()

    def ctl(self, *args: str) -> str:
        result = subprocess.run([str(SBIN / "rabbitmqctl"), "-n", self.node, "-q", *args],
                                env=self.env, capture_output=True, text=True, check=True,
                                timeout=60)
        return result.stdout

    def stop(self) -> None:
        self.ctl("stop")

    def cleanup(self) -> None:
        subprocess.run([str(SBIN / "rabbitmqctl"), "-n", self.node, "stop"], env=self.env,
                       capture_output=True, check=False, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)
