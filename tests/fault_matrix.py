"""One row of the fault matrix (docs/exporter.md), reported by the fault test that measured it.

Each network-fault test calls :func:`record` with what it measured; the line it prints
(``FAULT-MATRIX {json}``) is shown with ``pytest -s`` and collected by
bench/fault_matrix.py, which runs those tests and prints the table. A figure is seconds
(a float) or a phrase; ``None`` prints as "-".
"""

from __future__ import annotations

import json

PREFIX = "FAULT-MATRIX "


def record(fault: str, component: str, detected: float | str | None,
           recovered: float | str | None, lost: str) -> None:
    row = {"fault": fault, "component": component, "detected": detected,
           "recovered": recovered, "lost": lost}
    print(PREFIX + json.dumps(row), flush=True)
