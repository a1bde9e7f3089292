"""Every benchmark's smoke mode, run as ``make bench`` runs the script (a subprocess, its own
``--out``): it exits 0, prints its goals and writes its JSON. The goals that state behaviour
rather than speed must hold even at smoke size; the timing goals are reported, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BEHAVIOUR_GOALS = {
    "conversion": (),
    "agent": ("telemetry counted every agent call", "agent processes do not import tensorflow"),
    "byom_serving": ("agent outputs equal onnxruntime's", "telemetry counted every agent call"),
    "rollout": ("good rollout completes", "after the abort: only canaries touched"),
    "commands": (
        "every ping answered, none refused",
        "a signed command changed after signing is refused",
    ),
    "dashboard": (),
}
"""Per benchmark, the goals (by the start or the end of their names) that must pass."""


@pytest.mark.parametrize("name", sorted(BEHAVIOUR_GOALS))
def test_benchmark_smoke_mode(name: str, tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Goals" in done.stdout, done.stdout[-2000:]
    doc = json.loads((out / f"{name}.json").read_text())
    assert doc["settings"]["smoke"] is True
    goals = {g["name"]: g for g in doc["goals"]}
    assert goals and all(isinstance(g["passed"], bool) and g["measured"] for g in goals.values())
    for wanted in BEHAVIOUR_GOALS[name]:
        matching = [g for n, g in goals.items() if n.startswith(wanted) or n.endswith(wanted)]
        assert matching, (wanted, sorted(goals))
        assert all(g["passed"] for g in matching), matching
    if name == "conversion":  # every conversion it made is a row, with its size measured
        assert {(r["model"], r["who"]) for r in doc["rows"]} >= {
            ("digits", "edgeops"),
            ("digits", "library default"),
        }
        assert all(r["size_bytes"] > 0 and r["p50_ms"] > 0 for r in doc["rows"])
