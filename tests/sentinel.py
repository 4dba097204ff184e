"""A real Redis Sentinel set-up on loopback ports, for the failover tests.

One primary, one replica and three sentinels (``redis-sentinel``, installed by
scripts/setup), each on a free port, all started and stopped by the test. The sentinels
agree on a failure after ``DOWN_AFTER_MS`` with a quorum of two, so killing the primary
promotes the replica within a few seconds.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
from pathlib import Path

import redis

from tests.support import free_port, wait_for

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000


class SentinelSet:
    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="sentinel-set-"))
        self._procs: list[subprocess.Popen[bytes]] = []
        self.primary_port = free_port()
        self.replica_port = free_port()
        self.primary = self._redis(self.primary_port)
        self.replica = self._redis(self.replica_port, "--replicaof", "127.0.0.1",
                                   str(self.primary_port))
        wait_for(self._replica_in_sync, 20, what="the replica to sync")
        self.sentinel_ports = [free_port() for _ in range(3)]
        for port in self.sentinel_ports:
            self._sentinel(port)
        wait_for(self._sentinels_know_each_other, 30, what="three sentinels to meet")

    def _start(self, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (self._dir / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, cwd=self._dir, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._procs.append(proc)
        return proc

    def _redis(self, port: int, *extra: str) -> subprocess.Popen[bytes]:
        proc = self._start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                            "--save", "", "--appendonly", "no", *extra], f"redis-{port}")
        wait_for(lambda: redis.Redis(port=port, socket_timeout=1).ping(), 10,
                 what=f"redis-server on {port}")
        return proc

    def _sentinel(self, port: int) -> None:
        conf = self._dir / f"sentinel-{port}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndaemonize no\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        self._start(["redis-sentinel", str(conf)], f"sentinel-{port}")

    def _replica_in_sync(self) -> bool:
        info = redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")
        return bool(info.get("master_link_status") == "up")

    def _sentinels_know_each_other(self) -> bool:
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, socket_timeout=1)
            master = client.sentinel_master(MASTER_NAME)
            if int(master.get("num-other-sentinels", 0)) < 2 or int(
                    master.get("num-slaves", 0)) < 1:
                return False
        return True

    @property
    def url(self) -> str:
        """kombu's form: one sentinel:// URL per sentinel, separated by semicolons."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def primary_now(self) -> int:
        """The primary's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=port, socket_timeout=1)
                _host, primary = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(primary)
        raise AssertionError("no sentinel answers")

    def kill_primary(self) -> None:
        self.primary.send_signal(signal.SIGKILL)
        self.primary.wait(10)

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                         for p in sorted(self._dir.glob("*.log")))
