"""The package's import rules (pyproject's ``[tool.importlinter]`` contracts) hold, and fail on a
violation: a copy of the package with one forbidden import breaks exactly the contract named."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=120, check=False,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )


def test_the_tree_keeps_every_import_contract() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # The exporter reaching into the in-process side (what probes.py once did).
        ("exporter/store.py", "from otel_celery_metrics.worker import outcomes",
         {"The standalone exporter imports only the core"}),
        # The core depending on a room above it.
        ("core/safety.py", "from otel_celery_metrics.worker import green",
         # ... which is also a cycle between rooms, and puts worker under the exporter.
         {"In-process layers", "No import cycles", "The standalone exporter imports only"}),
        # A cycle between two modules of one room (what _port_check and _prometheus_web had).
        ("endpoint/server.py", "from otel_celery_metrics.endpoint import sdk_hooks",
         {"No import cycles"}),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, broken: set[str]
) -> None:
    shutil.copytree(REPO / "otel_celery_metrics", tmp_path / "otel_celery_metrics",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "otel_celery_metrics" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    verdicts = [ln for ln in result.stdout.splitlines() if ln.endswith(("KEPT", "BROKEN"))]
    found = {ln for ln in verdicts if ln.endswith("BROKEN")}
    assert len(found) == len(broken), result.stdout
    assert all(any(ln.startswith(name) for ln in found) for name in broken), result.stdout


ROOMS = ["core", "recording", "worker", "pool", "endpoint", "sdk_adapter", "exporter"]


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_docstring_names_each_of_its_modules(room: str) -> None:
    package = REPO / "otel_celery_metrics" / room
    docstring = (package / "__init__.py").read_text()
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem != "__init__")
    missing = [m for m in modules if f":mod:`.{m}`" not in docstring]
    assert not missing, f"otel_celery_metrics/{room}/__init__.py does not describe {missing}"
