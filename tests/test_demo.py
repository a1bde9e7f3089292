"""``make demo``, smaller: the whole loop in a subprocess, as a newcomer runs it first."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path


def _demo(out: Path, devices: int, drifted: int) -> subprocess.CompletedProcess[str]:
    args = ["--out", str(out), "--devices", str(devices), "--drifted", str(drifted)]
    return subprocess.run(
        [sys.executable, "-m", "edgeops.demo", *args], capture_output=True, text=True, timeout=900
    )


def _kept_demo(out: Path, devices: int, drifted: int) -> tuple[int, str, dict[str, object]]:
    """The demo with --keep: when it waits at the end, the dashboard's address it printed is
    used (its data endpoint, with the token from the address), then Enter ends it."""
    args = ["--out", str(out), "--devices", str(devices), "--drifted", str(drifted), "--keep"]
    p = subprocess.Popen(
        [sys.executable, "-m", "edgeops.demo", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert p.stdin is not None and p.stdout is not None
    timer = threading.Timer(900, p.kill)
    timer.start()
    lines: list[str] = []
    seen: dict[str, object] = {}
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("press Enter"):
                text = "".join(lines)
                url = re.findall(r"see them at (http://\S+)/ui/#token=(\S+)", text)[-1]
                req = urllib.request.Request(
                    f"{url[0]}/v1/views/fleet", headers={"Authorization": f"Bearer {url[1]}"}
                )
                with urllib.request.urlopen(req, timeout=30) as r:
                    seen = json.loads(r.read())
                with urllib.request.urlopen(f"{url[0]}/ui/", timeout=30) as r:
                    seen["page"] = r.read().decode()
                p.stdin.write("\n")
                p.stdin.flush()
        code = p.wait(60)
    finally:
        timer.cancel()
        p.kill()
    return code, "".join(lines), seen


def test_the_demo_runs_the_whole_loop_and_says_what_it_did(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code, text, seen = _kept_demo(out, 6, 2)
    assert code == 0, text[-8000:]
    # --keep: the dashboard's address worked while it waited, and showed the demo's fleet
    assert "dashboard: http://" in text and "#token=eo_" in text
    devices = seen["devices"]
    assert isinstance(devices, list) and len(devices) == 6
    assert {d["model_version"] for d in devices} == {"1.1.0"}
    assert "<title>Fleet" in str(seen["page"])
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
        assert chatter not in text, chatter  # stdout and stderr together
    # The failure path is one line: a fleet that cannot have undrifted devices.
    bad = _demo(out, 2, 2)
    assert bad.returncode == 1 and "demo FAILED: --drifted" in bad.stdout
