"""Packaging rules: no side effects on import, and the instrumentor never loads us."""

from __future__ import annotations

import subprocess
import sys

MODULES = [
    "otel_celery_metrics.exporter",
    "otel_celery_metrics.exporter.cli",
    "otel_celery_metrics.exporter.service",
    "otel_celery_metrics.exporter.receiver",
    "otel_celery_metrics.exporter.probes",
    "otel_celery_metrics.exporter.instruments",
    "otel_celery_metrics.exporter.handlers",
    "otel_celery_metrics.exporter.liveness",
    "otel_celery_metrics.exporter.http",
]


def run(code: str) -> str:
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout.strip()


def test_importing_the_exporter_starts_no_thread_and_reads_no_environment() -> None:
    code = (
        "import os, threading, importlib\n"
        "class Env(dict):\n"
        "    def __getitem__(self, k): raise AssertionError('read ' + k)\n"
        "    def get(self, k, d=None):\n"
        "        if k.startswith('OTEL_CELERY'): raise AssertionError('read ' + k)\n"
        "        return dict.get(self, k, d)\n"
        "os.environ = Env(os.environ)\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "print(threading.active_count())\n"
    )
    assert run(code) == "1"


def test_the_instrumentor_never_imports_the_exporter() -> None:
    code = (
        "import sys, otel_celery_metrics, otel_celery_metrics.instrumentor\n"
        "print(any(m.startswith('otel_celery_metrics.exporter') for m in sys.modules))\n"
    )
    assert run(code) == "False"
