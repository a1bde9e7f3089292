"""Package boundaries: the device side and the CLI's help stay free of TensorFlow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HEAVY = ("tensorflow", "keras", "converters", "tf2onnx", "onnx")


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nprint('LOADED:', *[m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1].split()[1:]


def test_device_agent_import_stays_light() -> None:
    assert _loaded_after("import device_agent, device_agent.runtimes, device_agent.benchmark") == []


def test_cli_help_does_not_import_tensorflow() -> None:
    code = (
        "from edgeops.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['convert', '--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    main(['bench', '--help'])\nexcept SystemExit:\n    pass"
    )
    assert _loaded_after(code) == []


def test_benchmark_runner_runs_without_tensorflow(converted: dict[str, Path]) -> None:
    code = (
        "from device_agent.benchmark import benchmark, BenchConfig\n"
        f"benchmark({str(converted['tflite-int8'])!r}, BenchConfig(runs=3, warmup=1))\n"
        f"benchmark({str(converted['onnx-fp32'])!r}, BenchConfig(runs=3, warmup=1))"
    )
    assert _loaded_after(code) == []
