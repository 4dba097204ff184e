"""Every shell block of README.md and docs/*.md names files, variables and flags that exist.

Cheap checks of what a newcomer copies (issue 29): a repository path a command uses (or the
prose names in backticks) exists, a module or object the prose names imports, every
``OTEL_CELERY_*`` variable is one the code reads, every other ``OTEL_*`` variable a command
sets is described in docs/configuration.md, every ``otel-celery-exporter`` flag is one its
parser takes and every ``celery worker`` option one Celery's CLI takes; instrumented
commands choose their trace and log exporters, and install commands work without a release.
Blocks marked ``<!-- doc-test: NAME -->`` are run by
tests/integration/test_documented_commands.py; this file checks each has a runner.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from otel_celery_metrics.core import metric_table as mt
from otel_celery_metrics.exporter.cli import build_parser, env_name
from otel_celery_metrics.exporter.config import ExporterConfig
from otel_celery_metrics.recording.settings import documented_variables
from tests.doc_blocks import DOCUMENTS, REPO, Block, blocks, shell_blocks

RUNNERS = REPO / "tests" / "integration" / "test_documented_commands.py"
#: Top-level entries of the repository a command may name (not .venv: a command makes it).
_TOP = {p.name for p in REPO.iterdir() if not p.name.startswith(".")}
_VARIABLE = re.compile(r"\bOTEL_[A-Z0-9_]+\b")


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return command.split()


def _paths(block: Block) -> list[tuple[str, list[Path]]]:
    """Repository paths the block's commands use, with the directories they may be
    relative to (the repository, and any directory the block cd's into)."""
    bases = [REPO]
    out = []
    for command in block.commands():
        words = _words(command)
        for i, word in enumerate(words):
            if word == "cd" and i + 1 < len(words):
                bases.append(REPO / words[i + 1])
            value = word.split("=", 1)[1] if word.startswith("-") and "=" in word else word
            value = value.split("[", 1)[0]  # a pip extra: path[all]
            if value.startswith(("/", "~")) or "://" in value or not value:
                continue
            first = value.split("/", 1)[0]
            if first in _TOP or value.startswith("../"):
                out.append((value, list(bases)))
    return out


def _exporter_flags() -> set[str]:
    parser = build_parser({})
    return {s for action in parser._actions for s in action.option_strings}


def test_every_repository_path_a_documented_command_uses_exists() -> None:
    used = [(b, path, bases) for b in shell_blocks() for path, bases in _paths(b)]
    missing = [f"{b.where()}: {path}" for b, path, bases in used
               if not any((base / path).exists() for base in bases)]
    assert len(used) >= 5 and not missing, (len(used), missing)


_REPO_PATH = re.compile(r"`((?:otel_celery_metrics|tests|docs|bench|tools|scripts|ci)/[^`\s]*)`")
_DOTTED = re.compile(r"`(otel_celery_metrics(?:\.\w+)+)`")


def test_every_repository_path_the_docs_name_in_backticks_exists() -> None:
    named = [(d, m.group(1).split("::")[0]) for d in DOCUMENTS
             for m in _REPO_PATH.finditer(d.read_text())]
    missing = [f"{d.relative_to(REPO)}: {path}" for d, path in named
               if not any(c in path for c in "*<>{}") and not (REPO / path).exists()]
    assert len(named) >= 20 and not missing, (len(named), missing)


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attribute in parts[i:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


def test_every_module_or_object_the_docs_name_can_be_imported() -> None:
    metric_names = {s.name for s in mt.METRICS + mt.EXPORTER_METRICS}
    named = [(d, m.group(1)) for d in DOCUMENTS for m in _DOTTED.finditer(d.read_text())
             if m.group(1) not in metric_names]
    unknown = [f"{d.relative_to(REPO)}: {name}" for d, name in named if not _resolves(name)]
    assert named and not unknown, unknown


def test_every_otel_celery_variable_the_docs_name_is_one_the_code_reads() -> None:
    ours = {v for v, _ in documented_variables()}
    ours |= {env_name(name) for name in ExporterConfig.__dataclass_fields__}
    unknown = []
    for document in DOCUMENTS:
        for variable in set(_VARIABLE.findall(document.read_text())):
            ours_by_name = variable.startswith(("OTEL_CELERY_METRICS_", "OTEL_CELERY_EXPORTER_"))
            if ours_by_name and not variable.endswith("_") and variable not in ours:
                unknown.append(f"{document.relative_to(REPO)}: {variable}")
    assert not unknown, unknown


def test_every_otel_variable_a_documented_command_sets_is_described_in_configuration() -> None:
    described = (REPO / "docs" / "configuration.md").read_text()
    # The exporter's own variables are its flags' (--help and docs/exporter.md list them;
    # the test above checks the exporter reads each one).
    missing = [f"{b.where()}: {v}" for b in shell_blocks() for v in _VARIABLE.findall(b.text)
               if v not in described and not v.startswith("OTEL_CELERY_EXPORTER_")]
    assert not missing, missing


def test_every_exporter_flag_in_the_docs_is_one_the_exporter_takes() -> None:
    flags = _exporter_flags()
    unknown, checked = [], 0
    for block in shell_blocks():
        for command in block.commands():
            words = _words(command)
            program = next((w for w in words if "=" not in w or w.startswith("-")), "")
            if program.rsplit("/", 1)[-1] != "otel-celery-exporter":
                continue  # e.g. helm install ... charts/otel-celery-exporter
            checked += 1
            for word in words:
                flag = word.split("=", 1)[0]
                if flag.startswith("--") and flag not in flags:
                    unknown.append(f"{block.where()}: {flag}")
    assert checked >= 2 and not unknown, (checked, unknown)


def _celery_worker_options() -> set[str]:
    from celery.bin.celery import celery
    from celery.bin.worker import worker

    return {o for command in (celery, worker) for p in command.params
            for o in (*p.opts, *p.secondary_opts)}


def test_every_celery_worker_option_in_the_docs_is_one_celery_takes() -> None:
    options = _celery_worker_options()
    unknown, checked = [], 0
    for block in shell_blocks():
        for command in block.commands():
            words = _words(command)
            if "celery" not in words or "worker" not in words or "multi" in words:
                continue
            checked += 1
            for word in words[words.index("celery") + 1:]:
                option = word.split("=", 1)[0]
                if option.startswith("-") and option not in options:
                    unknown.append(f"{block.where()}: {option}")
    assert checked >= 5 and not unknown, (checked, unknown)


def test_the_docs_show_an_install_command_that_works_without_a_release() -> None:
    # Issue 29: `pip install 'otel-celery-metrics[...]'` finds nothing until a release is
    # published; each page that gives it also gives the install from a clone.
    for block in shell_blocks():
        if "pip install 'otel-celery-metrics[" in block.text:
            assert "pip install '/path/to/checkout[" in block.text, block.where()


def test_instrumented_commands_choose_their_trace_and_log_exporters() -> None:
    # opentelemetry-distro defaults traces and logs to OTLP on localhost:4317: without a
    # Collector (the Prometheus path), or with ours (no logs pipeline), a worker would log
    # a failed export every few seconds (issue 29).
    for block in shell_blocks():
        for command in block.commands():
            if "opentelemetry-instrument " not in command:
                continue
            assert "OTEL_LOGS_EXPORTER=none" in command, block.where()
            if "OTEL_METRICS_EXPORTER=prometheus" in command:
                assert "OTEL_TRACES_EXPORTER=none" in command, block.where()
            else:
                assert "OTEL_TRACES_EXPORTER=" in command, block.where()


def _runner_names() -> set[str]:
    module = ast.parse(RUNNERS.read_text())
    names = set()
    for node in ast.walk(module):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "runnable" and node.args
                and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def test_every_runnable_block_has_a_test_that_runs_it() -> None:
    marked = {b.runnable_as for b in blocks() if b.runnable_as}
    assert marked, "no block is marked <!-- doc-test: NAME -->"
    assert marked == _runner_names()


@pytest.mark.parametrize("block", [b for b in blocks() if b.runnable_as],
                         ids=lambda b: b.runnable_as)
def test_runnable_blocks_are_shell(block: Block) -> None:
    assert block.language in ("sh", "bash"), block.where()
