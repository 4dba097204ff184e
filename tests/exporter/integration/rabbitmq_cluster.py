"""A private three-node RabbitMQ cluster on one machine, for the failover test.

Three :class:`~.private_rabbitmq.PrivateRabbitMQ` nodes (their own node names, AMQP and
distribution ports, data and logs) share one Erlang cookie, start together, and the
others join the first (``rabbitmqctl join_cluster``). Exchanges and bindings are then
cluster-wide, and a quorum queue declared after the join has a member on every node: it
keeps a majority (and so its messages and consumers) when any one node stops. Two nodes
would not do: a two-member quorum queue stops serving when either member goes.
"""

from __future__ import annotations

import secrets
import subprocess
import time

from tests.exporter.integration.private_rabbitmq import SBIN, PrivateRabbitMQ


class RabbitMQCluster:
    def __init__(self, size: int = 3) -> None:
        self.nodes = tuple(PrivateRabbitMQ() for _ in range(size))
        cookie = secrets.token_hex(16).upper()
        for node in self.nodes:
            path = node.dir / ".erlang.cookie"
            path.write_text(cookie)
            path.chmod(0o400)

    @property
    def first(self) -> PrivateRabbitMQ:
        return self.nodes[0]

    @property
    def others(self) -> tuple[PrivateRabbitMQ, ...]:
        return self.nodes[1:]

    def start(self, timeout: float = 150.0) -> None:
        for node in self.nodes:  # all boot at once: a node takes about 20 s here
            subprocess.run([str(SBIN / "rabbitmq-server"), "-detached"], env=node.env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not all(node.answers() for node in self.nodes):
            if time.monotonic() > deadline:
                msg = f"the cluster's nodes did not answer within {timeout:.0f}s"
                raise RuntimeError(msg)
            time.sleep(0.3)  # polling for the nodes, with a deadline
        for node in self.others:
            node.ctl("stop_app")
            node.ctl("join_cluster", self.first.node)
            node.ctl("start_app")
        while not all(n.node in self.first.ctl("cluster_status") for n in self.others) or not all(
                node.answers() for node in self.nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the other nodes did not join the first")
            time.sleep(0.3)

    @property
    def url(self) -> str:
        """kombu's failover list: every node, the first first."""
        return ";".join(node.url for node in self.nodes)

    def cleanup(self) -> None:
        for node in reversed(self.nodes):
            node.cleanup()
