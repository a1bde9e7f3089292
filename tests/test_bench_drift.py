"""The drift benchmark's smoke mode runs (``make bench`` runs it in full in ``.venv-drift``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_drift_benchmark_smoke(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "drift.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((tmp_path / "drift.json").read_text())
    assert doc["smoke"] is True and doc["goals"]
    cases = {r["case"] for r in doc["rows"]}
    for case in (
        "null independent",
        "null clustered",
        "shift +0.5 std",
        "10 % missing",
        "ties +1 std",
    ):
        assert case in cases
    tools = {r["tool"] for r in doc["rows"]}
    assert "edgeops" in tools
    for peer in ("Evidently", "alibi-detect"):  # compared, or said to be missing
        assert peer in tools or peer in doc["unavailable"]
    assert "Goals" in run.stdout and "null independent" in run.stdout
