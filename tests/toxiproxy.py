"""A real fault proxy for the network-fault tests: Toxiproxy, built by scripts/setup.

:class:`Toxiproxy` runs ``.tools/bin/toxiproxy-server`` on a free loopback port and
drives its HTTP API; :meth:`Toxiproxy.proxy` puts a TCP proxy on a free port in front
of a real broker. A :class:`Proxy` then takes faults and removes them again:

- :meth:`Proxy.hang`: Toxiproxy's ``timeout`` toxic with timeout 0, both ways: the
  connections stay open, bytes stop (and are dropped), no FIN, no RST; new connections
  are accepted (a TCP handshake completes) and hear nothing. A wedged broker or a
  network partition looks like this to a client.
- :meth:`Proxy.latency`: every byte delayed, both ways.
- :meth:`Proxy.bandwidth`: both ways limited to a rate in KB/s.
- :meth:`Proxy.reset`: every connection reset (RST) at once; new ones too while it lasts.
- :meth:`Proxy.cure`: all toxics removed.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from tests.support import REPO, free_port, wait_for

SERVER = REPO / ".tools" / "bin" / "toxiproxy-server"


class Proxy:
    def __init__(self, api: Toxiproxy, name: str, port: int) -> None:
        self._api = api
        self.name = name
        self.port = port

    def _toxic(self, kind: str, stream: str, **attributes: Any) -> None:
        self._api.call("POST", f"/proxies/{self.name}/toxics", {
            "name": f"{kind}-{stream}", "type": kind, "stream": stream, "toxicity": 1.0,
            "attributes": attributes,
        })

    def hang(self) -> None:
        for stream in ("upstream", "downstream"):
            self._toxic("timeout", stream, timeout=0)

    def latency(self, milliseconds: int) -> None:
        for stream in ("upstream", "downstream"):
            self._toxic("latency", stream, latency=milliseconds, jitter=0)

    def bandwidth(self, kilobytes_per_second: int) -> None:
        for stream in ("upstream", "downstream"):
            self._toxic("bandwidth", stream, rate=kilobytes_per_second)

    def reset(self) -> None:
        self._toxic("reset_peer", "downstream", timeout=0)

    def cure(self) -> None:
        toxics = self._api.call("GET", f"/proxies/{self.name}/toxics")
        for toxic in toxics:
            self._api.call("DELETE", f"/proxies/{self.name}/toxics/{toxic['name']}")


class Toxiproxy:
    def __init__(self) -> None:
        if not SERVER.exists():
            msg = f"{SERVER} is missing: scripts/setup builds it (tools/toxiproxy)"
            raise RuntimeError(msg)
        self.port = free_port()
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the server
            prefix="toxiproxy-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [str(SERVER), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        wait_for(self._answers, 20, what="toxiproxy-server to answer")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            msg = f"toxiproxy-server exited: {Path(self._log.name).read_text()[-2000:]}"
            raise RuntimeError(msg)
        try:
            self.call("GET", "/version")
        except OSError:
            return False
        return True

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        try:
            return json.loads(text) if text else None
        except ValueError:
            return text

    def proxy(self, name: str, upstream_port: int) -> Proxy:
        """A proxy on a free loopback port in front of 127.0.0.1:``upstream_port``."""
        made = self.call("POST", "/proxies", {
            "name": name, "listen": "127.0.0.1:0", "upstream": f"127.0.0.1:{upstream_port}",
            "enabled": True,
        })
        return Proxy(self, name, int(made["listen"].rsplit(":", 1)[1]))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()
