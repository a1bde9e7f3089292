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
    commands = [[], ["convert"], ["bench"], ["train"], ["validate"], ["keys", "generate"]]
    commands += [["package"], ["verify"], ["build"]]
    code = "from edgeops.cli import main\n" + "".join(
        f"try:\n    main({[*c, '--help']!r})\nexcept SystemExit:\n    pass\n" for c in commands
    )
    assert _loaded_after(code) == []


def test_core_modules_stay_light() -> None:
    code = "import edgeops.bundle, edgeops.signing, edgeops.profile, edgeops.stats, edgeops.metrics"
    code += ", edgeops.preprocessing, edgeops.schema, edgeops.table, edgeops.modelinfo"
    code += ", edgeops.wire, edgeops.topics, edgeops.latency, edgeops.window, edgeops.drift"
    code += ", edgeops.window_merge, edgeops.bodies"
    assert _loaded_after(code) == []


def test_benchmark_runner_runs_without_tensorflow(converted: dict[str, Path]) -> None:
    code = (
        "from device_agent.benchmark import benchmark, BenchConfig\n"
        f"benchmark({str(converted['tflite-int8'])!r}, BenchConfig(runs=3, warmup=1))\n"
        f"benchmark({str(converted['onnx-fp32'])!r}, BenchConfig(runs=3, warmup=1))"
    )
    assert _loaded_after(code) == []
