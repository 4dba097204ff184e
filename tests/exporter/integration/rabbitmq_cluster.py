"""A private two-node RabbitMQ cluster on one machine, for the failover test.

Two :class:`~.private_rabbitmq.PrivateRabbitMQ` nodes (their own node names, AMQP and
distribution ports, data and logs) share one Erlang cookie, start together, and the
second joins the first (``rabbitmqctl join_cluster``). Exchanges and bindings are then
cluster-wide; a classic queue lives on the node that declared it.
"""

from __future__ import annotations

import secrets
import subprocess
import time

from tests.exporter.integration.private_rabbitmq import SBIN, PrivateRabbitMQ


class RabbitMQCluster:
    def __init__(self) -> None:
        self.first = PrivateRabbitMQ()
        self.second = PrivateRabbitMQ()
        cookie = secrets.token_hex(16).upper()
        for node in self.nodes:
            path = node.dir / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o400)

    @property
    def nodes(self) -> tuple[PrivateRabbitMQ, PrivateRabbitMQ]:
        return self.first, self.second

    def start(self, timeout: float = 120.0) -> None:
        for node in self.nodes:  # both boot at once: a node takes about 20 s here
            subprocess.run([str(SBIN / "rabbitmq-server"), "-detached"], env=node.env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not all(node.answers() for node in self.nodes):
            if time.monotonic() > deadline:
                msg = f"the cluster's nodes did not answer within {timeout:.0f}s"
                raise RuntimeError(msg)
            time.sleep(0.3)  # polling for the nodes, with a deadline
        self.second.ctl("stop_app")
        self.second.ctl("join_cluster", self.first.node)
        self.second.ctl("start_app")
        while self.first.node not in self.second.ctl("cluster_status") or not all(
                node.answers() for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the second node did not join the first")
            time.sleep(0.3)

    @property
    def url(self) -> str:
        """kombu's failover list: the first node, then the second."""
        return f"{self.first.url};{self.second.url}"

    def cleanup(self) -> None:
        for node in reversed(self.nodes):
            node.cleanup()
