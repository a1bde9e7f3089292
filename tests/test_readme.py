"""Every ``sh`` example of README.md runs as written, in README order, in one empty directory.

The blocks are read from the README itself, so an example that stops working fails here. What
the test adds is only what the README says the reader brings:

- a mosquitto, at a free port instead of 1883; the ports 8470 (the agent's local API) and 8480
  (the service's REST API) become free ones too. These three numbers are the only text replaced;
- ``edgeops`` on the PATH (this virtualenv's), an empty HOME and no ``EDGEOPS_*`` variables;
- ``toml`` blocks whose first line is ``# file: NAME`` are written to NAME before the ``sh``
  block that follows them;
- a command that ends in ``&`` runs in the background, as in a shell; the test waits until it
  answers (the agent's ``/v1/health``, the service's ``/healthz``) before the next line, and stops
  it (SIGTERM) at the end.

A block whose first line is ``# not run by tests/test_readme.py: REASON`` is skipped, visibly in
the README; there are few (installing into /etc, ``make``, third-party model files).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeops.testing import Mosquitto, free_port

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = "# not run by tests/test_readme.py:"
FILE = re.compile(r"^# file: (\S+)\s*$")
PORTS = ("1883", "8470", "8480")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    lang: str
    line: int  # where the block starts in the README (its ``` line)
    text: str

    @property
    def skipped(self) -> bool:
        return self.text.startswith(NOT_RUN)

    @property
    def file(self) -> str | None:
        m = FILE.match(self.text.splitlines()[0]) if self.text else None
        return m.group(1) if m else None


def readme_blocks(text: str) -> list[Block]:
    """The fenced ``sh`` and ``toml`` blocks of the README, in order."""
    blocks: list[Block] = []
    lang: str | None = None
    start = 0
    body: list[str] = []
    for i, line in enumerate(text.splitlines(), 1):
        if lang is None:
            m = re.match(r"^```(\w+)\s*$", line)
            if m:
                lang, start, body = m.group(1), i, []
        elif line.startswith("```"):
            if lang in ("sh", "toml"):
                blocks.append(Block(lang, start, "\n".join(body) + "\n"))
            lang = None
        else:
            body.append(line)
    return blocks


def commands(sh: str) -> list[str]:
    """A block's commands: continuation lines joined, comments and blank lines dropped."""
    out: list[str] = []
    pending = ""
    for raw in sh.splitlines():
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def test_readme_blocks_are_marked_few_and_parsed() -> None:
    blocks = readme_blocks(README.read_text())
    sh = [b for b in blocks if b.lang == "sh"]
    skipped = [b for b in sh if b.skipped]
    assert len(sh) >= 10 and len(skipped) <= 5, [b.line for b in skipped]
    # Every skipped block says why, on its first line.
    assert all(len(b.text.splitlines()[0]) > len(NOT_RUN) + 10 for b in skipped)
    assert [b.file for b in blocks if b.lang == "toml" and b.file] == ["agent.toml"]
    joined = commands("a --x \\\n    --y 1   # note\n# comment\n\nb &\n")
    assert joined == ["a --x      --y 1   # note", "b &"]


def _wait_line(command: str, ports: dict[str, str]) -> str:
    """A line that waits until a background command answers (at most 90 s)."""
    if " agent run " in f" {command} ":
        url = f"http://127.0.0.1:{ports['8470']}/v1/health"
    elif " serve " in f" {command} ":
        url = f"http://127.0.0.1:{ports['8480']}/healthz"
    else:
        raise AssertionError(f"the README test does not know how to wait for: {command}")
    probe = (
        "import sys, time, urllib.request\n"
        "end = time.monotonic() + 90\n"
        "while True:\n"
        "    try:\n"
        "        urllib.request.urlopen(sys.argv[1], timeout=2).read(); break\n"
        "    except Exception as e:\n"
        "        if time.monotonic() > end: sys.exit(f'{sys.argv[1]} never answered: {e}')\n"
        "        time.sleep(0.3)\n"
    )
    return f'"$PYTHON" -c {_quote(probe)} {url}'


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def script(blocks: list[Block], ports: dict[str, str]) -> str:
    """One bash script: every block that is run, in order, with the test's waits."""

    def ported(text: str) -> str:
        for old, new in ports.items():
            text = re.sub(rf"\b{old}\b", new, text)
        return text

    lines = [
        "set -euo pipefail",
        # Background commands get SIGTERM at the end (a clean stop), whatever happened.
        "trap 'kill $(jobs -p) 2>/dev/null || true; wait || true' EXIT",
    ]
    for b in blocks:
        if b.skipped:
            continue
        if b.lang == "toml":
            if b.file is None:
                continue
            lines.append(f"cat > {b.file} <<'README_EOF'\n{ported(b.text)}README_EOF")
            continue
        lines.append(f"echo '### README line {b.line}' >&2")
        for cmd in commands(ported(b.text)):
            lines.append(f"echo '$ {cmd.replace(chr(39), '')}' >&2")
            lines.append(cmd)
            if cmd.rstrip().endswith("&"):
                lines.append(_wait_line(cmd, ports))
    return "\n".join(lines) + "\n"


def test_every_readme_example_runs(tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    ports = {"1883": "", "8470": str(free_port()), "8480": str(free_port())}
    work = tmp_path / "work"
    work.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    with Mosquitto() as broker:
        ports["1883"] = str(broker.port)
        text = script(blocks, ports)
        (tmp_path / "readme.sh").write_text(text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEOPS_")}
        env.update(
            HOME=str(home),
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHON=sys.executable,
        )
        proc = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")],
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            output, _ = proc.communicate(timeout=1200)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    (tmp_path / "readme.log").write_text(output)
    tail = "\n".join(output.splitlines()[-60:])
    assert proc.returncode == 0, f"README example failed (log: {tmp_path / 'readme.log'}):\n{tail}"
    assert "Traceback" not in output, tail
    # What the walk made: the bundles, the deployment that completed, the converted models.
    for made in (
        "dist/wine-1.0.0.bundle",
        "dist/wine-1.0.1.bundle",
        "build/digits/digits-1.0.0.bundle",
        "dist/digits-1.1.0.bundle",
        "build/model.int8.tflite",
        "build/model.int8.onnx",
        "bench.json",
    ):
        assert (work / made).is_file(), made
    assert "labels sent back" in output and "completed" in output
    # Progress as it goes, and no native library's own line in the output.
    assert "train: epoch 1/" in output and "convert: checking fidelity on" in output
    for chatter in ("XNNPACK delegate", "absl::InitializeLog", "oneDNN custom operations"):
        assert chatter not in output, chatter
    # ONNX int8 into a relative --out is pre-processed like any other.
    assert "pre-processing failed" not in output
