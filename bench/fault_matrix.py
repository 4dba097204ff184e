"""The fault matrix of docs/exporter.md: per fault and component, detected after, recovered
after, lost.

Runs the network-fault and failover tests (they start Toxiproxy, the Collector, Redis
Sentinel, a RabbitMQ cluster, the exporter and instrumented prefork workers themselves),
collects the row each one reports (:mod:`tests.fault_matrix`) and prints the Markdown
table docs/exporter.md shows. The tests assert as usual: a failing one is reported and
the command exits 1, so a figure in the table is always one from a passing run.

    .venv/bin/python bench/fault_matrix.py            # every scenario (about 3 minutes)
    .venv/bin/python bench/fault_matrix.py -k redis   # extra arguments go to pytest

Needs scripts/setup (the tools and the brokers); TEST_REDIS_URL / TEST_RABBITMQ_URL as
for the tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fault_matrix import PREFIX  # noqa: E402 - after the path is set

SCENARIOS = [
    "tests/exporter/integration/test_network_faults.py",
    "tests/exporter/integration/test_sentinel.py",
    "tests/exporter/integration/test_rabbitmq_cluster.py",
    "tests/integration/test_network_faults.py",
    "tests/integration/test_collector_network_faults.py",
]
HEADER = ("| Fault | Component | Detected after | Recovered after | Lost |\n"
          "| --- | --- | --- | --- | --- |")


def _cell(figure: object) -> str:
    if figure is None:
        return "-"
    if isinstance(figure, float | int):
        return f"{figure:.1f} s"
    return str(figure)


def table(rows: list[dict[str, object]]) -> str:
    lines = [HEADER]
    lines += [f"| {row['fault']} | {row['component']} | {_cell(row['detected'])} | "
              f"{_cell(row['recovered'])} | {row['lost']} |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    command = [sys.executable, "-m", "pytest", "-s", "-q", "-p", "no:cacheprovider",
               *SCENARIOS, *argv]
    print("running:", " ".join(command[1:]), file=sys.stderr, flush=True)
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    # A row can follow pytest's progress dots on the same line.
    rows = [json.loads(line.split(PREFIX, 1)[1]) for line in done.stdout.splitlines()
            if PREFIX in line]
    summary = [line for line in done.stdout.splitlines() if line.strip()][-1:]
    print(*summary, file=sys.stderr)
    if done.returncode != 0:
        print(done.stdout[-6000:], done.stderr[-2000:], file=sys.stderr)
        print(f"pytest exited {done.returncode}: no table", file=sys.stderr)
        return 1
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
