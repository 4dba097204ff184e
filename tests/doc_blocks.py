"""The fenced code blocks of README.md and docs/*.md, for the tests that keep them true.

A block preceded by a ``<!-- doc-test: NAME -->`` line is *runnable*: a test runs it, as
written, on the test machine (tests/integration/test_documented_commands.py), and a unit
test fails when a marked block has no runner. Blocks that cannot run here (Kubernetes,
containers, commands against a user's own app) stay unmarked; their files, variables and
flags are checked by tests/unit/test_documented_commands.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = (REPO / "README.md", *sorted((REPO / "docs").glob("*.md")))
SHELL_LANGUAGES = frozenset({"sh", "bash", "shell", "console"})

_FENCE = re.compile(r"^```(\S*)\s*$")
_MARK = re.compile(r"^<!--\s*doc-test:\s*([\w-]+)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language, its text and its doc-test name."""

    document: Path
    line: int
    language: str
    text: str
    runnable_as: str | None

    def where(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"

    def commands(self) -> list[str]:
        """Its shell commands: comments dropped, backslash continuations joined."""
        joined = re.sub(r"\\\n", " ", self.text)
        out = []
        for line in joined.splitlines():
            command = re.sub(r"(^|\s)#.*$", "", line).strip()
            if command:
                out.append(command)
        return out


def blocks(documents: tuple[Path, ...] = DOCUMENTS) -> list[Block]:
    out: list[Block] = []
    for document in documents:
        lines = document.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = _FENCE.match(lines[i])
            if not fence:
                i += 1
                continue
            mark = _MARK.match(lines[i - 1]) if i > 0 else None
            end = i + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            out.append(Block(document, i + 1, fence.group(1), "\n".join(lines[i + 1:end]),
                             mark.group(1) if mark else None))
            i = end + 1
    return out


def shell_blocks() -> list[Block]:
    return [b for b in blocks() if b.language in SHELL_LANGUAGES]


def runnable(name: str) -> Block:
    """The one block marked ``<!-- doc-test: name -->``."""
    found = [b for b in blocks() if b.runnable_as == name]
    assert len(found) == 1, f"doc-test {name}: {len(found)} blocks marked, expected 1"
    return found[0]
