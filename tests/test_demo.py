"""``make demo``, smaller: the whole loop in a subprocess, as a newcomer runs it first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _demo(out: Path, devices: int, drifted: int) -> subprocess.CompletedProcess[str]:
    args = ["--out", str(out), "--devices", str(devices), "--drifted", str(drifted)]
    return subprocess.run(
        [sys.executable, "-m", "edgeops.demo", *args], capture_output=True, text=True, timeout=900
    )


def test_the_demo_runs_the_whole_loop_and_says_what_it_did(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    p = _demo(out, 6, 2)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    text = p.stdout
    for step in (
        "== train",
        "== convert and package 1.0.0",
        "== drift",
        "== rollout",
        "== summary",
    ):
        assert step in text, step
    assert "ALERT" in text and "completed" in text and "demo OK" in text
    assert "commands signed by key" in text and (out / "keys" / "command.pub").exists()
    summary = text[text.index("== summary") :]
    rows = [line for line in summary.splitlines() if line.startswith("dev-")]
    assert len(rows) == 6 and all("digits 1.1.0" in r for r in rows), rows
    assert sum("brighter" in r for r in rows) == 2
    assert (out / "bundles" / "digits-1.0.0.bundle").exists()
    assert (out / "bundles" / "digits-1.1.0.bundle").exists()
    # TensorFlow's and LiteRT's own start-up lines go through logging, below its level here.
    for chatter in ("XNNPACK delegate", "absl::InitializeLog", "oneDNN custom operations"):
        assert chatter not in p.stdout + p.stderr, chatter
    # The failure path is one line: a fleet that cannot have undrifted devices.
    bad = _demo(out, 2, 2)
    assert bad.returncode == 1 and "demo FAILED: --drifted" in bad.stdout
