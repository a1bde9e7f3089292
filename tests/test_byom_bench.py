"""The bring-your-own-model benchmark's smoke mode, as ``make bench`` would run it (smaller)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import Corpus

ROOT = Path(__file__).resolve().parent.parent


def test_byom_benchmark_smoke(corpus: Corpus, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "byom.py"), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads((tmp_path / "byom.json").read_text())
    rows = doc["rows"]
    assert {r["model"] for r in rows} == {"ocr-cls", "vad-batch1"}
    ours = [r for r in rows if r["who"] == "edgeops"]
    theirs = [r for r in rows if r["who"] == "onnxruntime"]
    assert len(ours) == 8 and len(theirs) == 4
    assert all(r["status"] in ("accepted", "rejected", "refused") for r in ours)
    assert all(r["status"] in ("ok", "failed") for r in theirs)
    for r in rows:
        if r["status"] in ("rejected", "refused", "failed"):
            assert r["why"], r  # every refusal says why
        if r["file"]:
            assert r["p50_ratio"] > 0 and r["size_ratio"] > 0
    fp32 = [r for r in ours if r["mode"] == "fp32"]
    assert all(r["p50_ratio"] == 1.0 and r["size_ratio"] == 1.0 for r in fp32)
    names = [g["name"] for g in doc["goals"]]
    assert len(names) == 4 and names[0].startswith("every model converts")
    assert doc["all_goals_pass"] == all(g["passed"] for g in doc["goals"])
    assert "Goals" in proc.stdout and "p50 x" in proc.stdout
