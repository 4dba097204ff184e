"""A real SQS-compatible server for the SQS tests: ElasticMQ, run with Java 17.

scripts/setup copies ElasticMQ's server and its dependencies from Maven Central into
``.tools/elasticmq/lib`` (tools/elasticmq/pom.xml). :func:`running_elasticmq` starts it
in its own process group with a config file that binds an ephemeral loopback port
(``bind-port = 0``; ``generate-node-address`` makes the queue URLs it hands out carry
that port), reads the port from its start-up line, waits until it answers an SQS call
(``ListQueues``), and stops it. A missing install fails the test with the command
that provides it: CI never skips these.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import SETUP_HINT, _stop
from tests.support import REPO, wait_for

LIB = REPO / ".tools" / "elasticmq" / "lib"

#: ElasticMQ's configuration (HOCON): SQS on an ephemeral loopback port, nothing else.
CONFIG = """\
include classpath("application.conf")
generate-node-address = true
rest-sqs {
  enabled = true
  bind-hostname = "127.0.0.1"
  bind-port = 0
  sqs-limits = strict
}
rest-stats { enabled = false }
"""

#: Transport options of the SQS tests: short long-polls so that a worker consuming several
#: queues turns to the next one quickly (kombu polls them in turn).
SQS_TEST_OPTIONS = {"region": "us-east-1", "wait_time_seconds": 1, "polling_interval": 0.1}

_BOUND = re.compile(r"Started SQS rest server, bind address 127\.0\.0\.1:(\d+)")


@dataclass(frozen=True)
class ElasticMQ:
    """A running ElasticMQ: its SQS endpoint and a broker URL Celery and kombu accept."""

    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def broker_url(self, access_key: str = "test") -> str:
        # kombu's SQS transport turns host and port into the endpoint URL (http unless
        # the is_secure transport option says otherwise); ElasticMQ takes any key.
        return f"sqs://{access_key}:secret@127.0.0.1:{self.port}"

    def queue_names(self) -> list[str]:
        """The queues on the server (their SQS names, as kombu wrote them)."""
        with urllib.request.urlopen(  # noqa: S310 - the test's own loopback server
            f"{self.endpoint}/?Action=ListQueues", timeout=5
        ) as resp:
            body = resp.read().decode()
        return [url.rsplit("/", 1)[-1] for url in re.findall(r"<QueueUrl>([^<]+)<", body)]

    def client(self) -> Any:
        """A boto3 SQS client on this server (for what Celery cannot do: delays, receives)."""
        import boto3

        return boto3.client("sqs", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="test",
                            aws_secret_access_key="secret")  # noqa: S106 - ElasticMQ takes any

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _java() -> str:
    java = shutil.which("java")
    if not java or not any(LIB.glob("elasticmq-server_*.jar")):
        pytest.fail(f"ElasticMQ (Java 17 and {LIB}) not found: {SETUP_HINT}")
    return java


@contextmanager
def running_elasticmq(workdir: Path) -> Iterator[ElasticMQ]:
    java = _java()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "elasticmq.conf"
    config.write_text(CONFIG)
    log = workdir / "elasticmq.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            # C1 only and the serial collector: a short-lived test server starts faster
            # (alternating runs on a loaded 2-core machine: 5.5-13.5 s against 20-24 s).
            [java, f"-Dconfig.file={config}", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
             "-cp", f"{LIB}/*", "org.elasticmq.server.Main"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        def bound() -> int:
            if proc.poll() is not None:
                msg = f"ElasticMQ exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
                raise RuntimeError(msg)
            found = _BOUND.search(log.read_text(errors="replace"))
            return int(found.group(1)) if found else 0

        port = wait_for(bound, timeout=60, interval=0.1, what="ElasticMQ's bound port")
        server = ElasticMQ(port, log)
        # Listening is not serving: wait for an answer to a real SQS call.
        wait_for(lambda: server.queue_names() is not None, timeout=30, interval=0.1,
                 what=lambda: f"ElasticMQ to answer ListQueues\n{server.log_tail()}")
        yield server
    finally:
        _stop(proc)
