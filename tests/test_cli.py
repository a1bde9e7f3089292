"""The command line end to end: convert, gates, bad input, bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeops.core import errors
from tests.conftest import Trained


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_convert_prints_report_table(cli, digits: Trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli(
        "convert",
        digits.model,
        "--to",
        "tflite",
        "--quantize",
        "int8",
        "--calibration",
        digits.calibration,
        "--validation",
        digits.validation,
        "--out",
        tmp_path,
        "--latency-runs",
        5,
    )
    assert r.code == 0, r.err
    for text in (
        "digits.int8.tflite",
        "top-1 agreement",
        "accuracy source -> converted",
        "host latency",
        "quantized",
        "CONV_2D",
    ):
        assert text in r.out
    assert _files(tmp_path) == ["digits.int8.tflite", "digits.int8.tflite.report.json"]


def test_failed_gate_keeps_a_rejected_artifact(cli, digits: Trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # Calibrating on a tiny corner of the input range makes int8 clip nearly everything.
    x = np.load(digits.calibration)["x"] * 0.02
    bad_cal = tmp_path / "tiny.npz"
    np.savez(bad_cal, x=x)
    out = tmp_path / "out"
    r = cli(
        "convert",
        digits.model,
        "--to",
        "tflite",
        "--quantize",
        "int8",
        "--calibration",
        bad_cal,
        "--validation",
        digits.validation,
        "--out",
        out,
        "--latency-runs",
        5,
        "--max-accuracy-drop",
        0.5,
        "--min-agreement",
        0.99,
    )
    assert r.code == errors.GateError.exit_code
    assert r.error.startswith("error: rejected: accuracy drop") and r.error.count("\n") == 1
    assert "  convert: checking fidelity on" in r.err  # progress before it
    assert _files(out) == ["digits.int8.rejected.tflite", "digits.int8.rejected.tflite.report.json"]
    report = json.loads((out / "digits.int8.rejected.tflite.report.json").read_text())
    assert report["status"] == "rejected" and len(report["reasons"]) == 3
    assert "SNR" in report["reasons"][2]  # the default floor says it too
    # A passing run with the same name replaces the rejected files.
    r = cli(
        "convert",
        digits.model,
        "--to",
        "tflite",
        "--quantize",
        "int8",
        "--calibration",
        digits.calibration,
        "--validation",
        digits.validation,
        "--out",
        out,
        "--latency-runs",
        5,
        "--max-accuracy-drop",
        2,
    )
    assert r.code == 0, r.err
    assert _files(out) == ["digits.int8.tflite", "digits.int8.tflite.report.json"]


@pytest.fixture
def corrupt(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for suffix in (".keras", ".onnx", ".tflite"):
        p = tmp_path / f"corrupt{suffix}"
        p.write_bytes(b"\x00garbage" * 100)
        files[suffix] = p
    return files


@pytest.mark.parametrize(
    ("case", "code", "message"),
    [
        ("missing", errors.ModelError, "no such file"),
        ("corrupt.keras", errors.ModelError, "not a loadable Keras model"),
        ("corrupt.onnx", errors.ModelError, "not a loadable ONNX model"),
        ("corrupt.tflite", errors.ModelError, "not a loadable TFLite model"),
        ("not-a-savedmodel-dir", errors.ModelError, "without saved_model.pb"),
        ("calibration-shape", errors.InputDataError, "expects (8, 8, 1)"),
        ("calibration-dtype", errors.InputDataError, "expected numbers"),
        ("calibration-missing", errors.InputDataError, "no such file"),
        ("unwritable-out", errors.OutputError, "cannot write the output directory"),
        ("float16-on-mcu", errors.UsageError, "cannot run on a mcu target"),
        ("onnx-on-mcu", errors.UsageError, "target mcu needs --to tflite"),
        ("int8-without-data", errors.UsageError, "needs representative data"),
        ("gate-without-validation", errors.UsageError, "need --validation"),
        ("onnx-to-tflite", errors.UsageError, "onnx to tflite is not supported"),
        ("bad-mode", errors.UsageError, "unknown quantization mode"),
        ("int16x8-onnx", errors.UsageError, "int16x8 is a TFLite mode"),
    ],
)
def test_bad_input(
    cli,
    digits: Trained,
    converted: dict[str, Path],
    corrupt: dict[str, Path],  # type: ignore[no-untyped-def]
    tmp_path: Path,
    case: str,
    code: type[errors.EdgeOpsError],
    message: str,
) -> None:
    out = tmp_path / "out"
    src: Path = digits.model
    extra: list[object] = [
        "--to",
        "tflite",
        "--quantize",
        "int8",
        "--calibration",
        digits.calibration,
    ]
    if case == "missing":
        src = tmp_path / "missing.keras"
    elif case.startswith("corrupt"):
        src = corrupt["." + case.split(".")[1]]
        extra = ["--to", "onnx"]
    elif case == "not-a-savedmodel-dir":
        src = tmp_path
    elif case == "calibration-shape":
        np.save(tmp_path / "flat.npy", np.zeros((10, 64), dtype=np.float32))
        extra[-1] = tmp_path / "flat.npy"
    elif case == "calibration-dtype":
        np.save(tmp_path / "text.npy", np.array([["a"] * 64] * 3))
        extra[-1] = tmp_path / "text.npy"
    elif case == "calibration-missing":
        extra[-1] = tmp_path / "nothing.npz"
    elif case == "unwritable-out":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out"
    elif case == "float16-on-mcu":
        extra = ["--to", "tflite", "--quantize", "float16", "--hw-target", "mcu"]
    elif case == "onnx-on-mcu":
        extra = ["--to", "onnx", "--hw-target", "mcu"]
    elif case == "int8-without-data":
        extra = ["--to", "tflite", "--quantize", "int8"]
    elif case == "gate-without-validation":
        extra += ["--min-agreement", 0.99]
    elif case == "onnx-to-tflite":
        src = converted["onnx-fp32"]
        extra = ["--to", "tflite"]
    elif case == "bad-mode":
        extra = ["--to", "tflite", "--quantize", "int4"]
    elif case == "int16x8-onnx":
        extra = ["--to", "onnx", "--quantize", "int16x8", "--calibration", digits.calibration]
    r = cli("convert", src, *extra, "--out", out, "--latency-runs", 3)
    assert r.code == code.exit_code, r.err
    assert r.err.startswith("error: ") and r.err.count("\n") == 1, r.err
    assert message in r.err
    if out.exists():
        assert _files(out) == [], "no artifact may be left behind"


def test_bench_compares_models(cli, converted: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    js = tmp_path / "bench.json"
    r = cli(
        "bench",
        converted["tflite-fp32"],
        converted["tflite-int8"],
        converted["onnx-int8"],
        "--runs",
        20,
        "--warmup",
        2,
        "--threads",
        1,
        "--json",
        js,
    )
    assert r.code == 0, r.err
    for text in ("init ms", "p99 ms", "samples/s", "peak RSS MB", "ai-edge-litert", "onnxruntime"):
        assert text in r.out
    data = json.loads(js.read_text())
    assert len(data) == 3
    for row in data:
        assert row["steady"]["count"] == 20 and row["init_ms"] > 0 and row["peak_rss_mb"] > 10
        assert row["steady"]["p50_ms"] <= row["steady"]["p99_ms"]


def test_bench_bad_model(cli, corrupt: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r = cli("bench", corrupt[".tflite"])
    assert r.code == errors.ModelError.exit_code and "not a loadable TFLite model" in r.err
    r = cli("bench", tmp_path / "nothing.onnx")
    assert r.code == errors.ModelError.exit_code and "no such model file" in r.err
