"""The service benchmark's smoke mode runs (``make bench`` runs it in full): every part at a toy
size, so that the benchmark cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_service_benchmark_smoke(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "service.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    doc = json.loads((tmp_path / "service.json").read_text())
    phases = {r["phase"]: r for r in doc["throughput"]}
    assert set(phases) == {"sqlite", "backlog sqlite", "live sqlite"}
    for r in phases.values():
        assert r["exactly_once"], r
        assert r["devices_evaluated"] == r["devices_in_db"] > 0, r
    assert phases["sqlite"]["bare_per_s"] > 0 and phases["sqlite"]["ratio"] > 0
    assert phases["live sqlite"]["lag_p95_s"] is not None
    assert doc["breakdown"] and doc["drift"]["no_drift"]
    assert "Goals" in run.stdout and "Where Service.handle_batch's time goes" in run.stdout
