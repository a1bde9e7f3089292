"""What every benchmark script shares: progress lines, goal verdicts, versions, JSON output."""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STARTED = time.perf_counter()


@dataclass(frozen=True)
class Goal:
    name: str
    measured: str
    passed: bool


def say(message: str) -> None:
    """Progress on stderr, so that stdout holds only the tables and the goals."""
    print(f"[{time.perf_counter() - STARTED:5.0f} s] {message}", file=sys.stderr, flush=True)


def goal_lines(found: Sequence[Goal]) -> str:
    width = max(len(g.name) for g in found)
    lines = [
        f"{'PASS' if g.passed else 'FAIL'}  {g.name.ljust(width)}  {g.measured}" for g in found
    ]
    return "\n".join(["Goals", *lines])


def package_versions(names: Iterable[str], *, python: bool = True) -> dict[str, str]:
    """Installed versions of ``names`` (missing ones left out), and Python's."""
    found = {"python": sys.version.split()[0]} if python else {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` through a temporary file, so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
    os.replace(tmp, path)


def elapsed() -> float:
    return round(time.perf_counter() - STARTED, 1)
