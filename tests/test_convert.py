"""Real conversions of real models, every mode and every source kind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from converters import (
    CalibrationMethod,
    ConversionConfig,
    Format,
    Gates,
    IOType,
    Mode,
    OnnxQuantization,
    QuantFormat,
    Status,
    Target,
    convert,
)
from device_agent.runtimes import open_runtime, run_float
from tests.conftest import Trained


def _cfg(t: Trained, to: Format, mode: Mode, **kw: object) -> ConversionConfig:
    return ConversionConfig(
        to=to, mode=mode, calibration=t.calibration, validation=t.validation, latency_runs=5, **kw
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "io", "max_drop"),
    [
        (Mode.FP32, None, 0.0),
        (Mode.DYNAMIC, None, 1.0),
        (Mode.FLOAT16, None, 0.5),
        (Mode.INT8, IOType.FLOAT, 1.5),
        (Mode.INT8, IOType.INT8, 1.5),
        (Mode.INT16X8, None, 1.0),
    ],
)
def test_tflite_modes(
    digits: Trained, tmp_path: Path, mode: Mode, io: IOType | None, max_drop: float
) -> None:
    report = convert(digits.model, tmp_path, _cfg(digits, Format.TFLITE, mode, io=io))
    model = tmp_path / report.artifact["file"]
    suffix = "-int8io" if io is IOType.INT8 else ""
    assert model.name == f"digits.{mode}{suffix}.tflite" and model.is_file()
    data = json.loads((tmp_path / f"{model.name}.report.json").read_text())
    # With validation data the default SNR floor gates every conversion.
    assert data["status"] == "accepted" and data["artifact"]["bytes"] == model.stat().st_size
    f = report.fidelity
    assert f is not None and f.samples == 450 and f.source_accuracy is not None
    assert f.source_accuracy > 0.9
    assert f.accuracy_drop_points is not None and f.accuracy_drop_points <= max_drop
    assert f.agreement is not None and f.agreement >= 0.97
    assert report.latency.p50_ms > 0 and report.latency.p99_ms >= report.latency.p50_ms
    assert report.ops.counts.get("CONV_2D") == 2
    if mode is Mode.FP32:
        assert f.agreement == 1.0 and report.size_ratio > 0.2
    else:
        assert report.size_ratio < 0.2
    (inp,), (out,) = report.inputs, report.outputs
    if io is IOType.INT8:
        assert inp.dtype == "int8" and inp.scale and inp.zero_point is not None
        assert out.dtype == "int8" and data["inputs"][0]["scale"] == pytest.approx(inp.scale)
    else:
        assert inp.dtype == "float32" and not inp.quantized


def test_formats_and_io_types_do_not_overwrite_each_other(digits: Trained, tmp_path: Path) -> None:
    for to, io in ((Format.TFLITE, None), (Format.TFLITE, IOType.INT8), (Format.ONNX, None)):
        convert(
            digits.model,
            tmp_path,
            ConversionConfig(
                to=to, mode=Mode.INT8, io=io, calibration=digits.calibration, latency_runs=3
            ),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "digits.int8-int8io.tflite",
        "digits.int8-int8io.tflite.report.json",
        "digits.int8.onnx",
        "digits.int8.onnx.report.json",
        "digits.int8.tflite",
        "digits.int8.tflite.report.json",
    ]


def test_int8_tflite_is_about_a_quarter_of_fp32(converted: dict[str, Path]) -> None:
    ratio = converted["tflite-int8"].stat().st_size / converted["tflite-fp32"].stat().st_size
    assert 0.25 <= ratio <= 0.32


@pytest.mark.parametrize(
    ("mode", "onnx"),
    [
        (Mode.FP32, OnnxQuantization()),
        (Mode.FLOAT16, OnnxQuantization()),
        (Mode.DYNAMIC, OnnxQuantization()),
        (Mode.INT8, OnnxQuantization()),
        (Mode.INT8, OnnxQuantization(format=QuantFormat.QOPERATOR, per_channel=False)),
        (Mode.INT8, OnnxQuantization(method=CalibrationMethod.ENTROPY, preprocess=False)),
        (Mode.INT8, OnnxQuantization(method=CalibrationMethod.PERCENTILE)),
    ],
)
def test_onnx_modes(digits: Trained, tmp_path: Path, mode: Mode, onnx: OnnxQuantization) -> None:
    report = convert(digits.model, tmp_path, _cfg(digits, Format.ONNX, mode, onnx=onnx))
    f = report.fidelity
    assert f is not None and f.agreement is not None and f.agreement >= 0.97
    assert f.accuracy_drop_points is not None and f.accuracy_drop_points <= 2.0
    ops = report.ops.counts
    if mode is Mode.INT8 and onnx.format is QuantFormat.QDQ:
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0
    if mode is Mode.INT8 and onnx.format is QuantFormat.QOPERATOR:
        assert ops.get("QLinearConv", 0) == 2
    if mode is Mode.FLOAT16:
        assert report.inputs[0].dtype == "float32"  # I/O kept float for callers


def test_saved_model_source(digits: Trained, digits_saved_model: Path, tmp_path: Path) -> None:
    report = convert(digits_saved_model, tmp_path, _cfg(digits, Format.TFLITE, Mode.INT8))
    assert report.source["kind"] == "saved_model"
    assert report.fidelity is not None and report.fidelity.agreement is not None
    assert report.fidelity.agreement >= 0.97


def test_third_party_onnx_is_quantized_and_verified(
    digits: Trained, converted: dict[str, Path], tmp_path: Path
) -> None:
    report = convert(converted["onnx-fp32"], tmp_path, _cfg(digits, Format.ONNX, Mode.INT8))
    assert report.source["kind"] == "onnx"
    assert report.fidelity is not None and report.fidelity.agreement is not None
    assert report.fidelity.agreement >= 0.97
    assert report.artifact["bytes"] < report.source["bytes"]


def test_tflite_to_onnx(digits: Trained, converted: dict[str, Path], tmp_path: Path) -> None:
    report = convert(converted["tflite-int8"], tmp_path, _cfg(digits, Format.ONNX, Mode.FP32))
    assert report.source["kind"] == "tflite"
    f = report.fidelity
    # The same int8 arithmetic, now run by onnxruntime: the answers barely move.
    assert f is not None and f.agreement is not None and f.agreement >= 0.99


def test_regressor_reports_mae_and_rmse(diabetes: Trained, tmp_path: Path) -> None:
    report = convert(diabetes.model, tmp_path, _cfg(diabetes, Format.TFLITE, Mode.INT8))
    f = report.fidelity
    assert f is not None and f.task.value == "regression" and f.agreement is None
    assert f.source_mae is not None and f.converted_mae is not None
    assert f.converted_mae < f.source_mae * 1.2
    assert f.outputs[0].snr_db is not None and f.outputs[0].snr_db > 15


def test_npu_target_defaults_to_integer_only(digits: Trained, tmp_path: Path) -> None:
    cfg = ConversionConfig(
        to=Format.TFLITE, target=Target.NPU, calibration=digits.calibration, latency_runs=5
    )
    report = convert(digits.model, tmp_path, cfg)
    assert report.settings["mode"] == "int8" and report.settings["io"] == "int8"
    assert report.inputs[0].dtype == "int8" and report.ops.issues == ()
    with open_runtime(tmp_path / report.artifact["file"]) as rt:
        x = np.zeros((2, 8, 8, 1), dtype=np.float32)
        assert run_float(rt, x)[0].shape == (2, 10)


def test_gpu_target_float16_and_mcu_op_check(digits: Trained, tmp_path: Path) -> None:
    gpu = convert(
        digits.model,
        tmp_path,
        ConversionConfig(to=Format.TFLITE, target=Target.GPU, latency_runs=5),
    )
    assert gpu.settings["mode"] == "float16"
    # Keras' Flatten leaves SHAPE/STRIDED_SLICE/PACK for the dynamic batch: no GPU kernels.
    assert {i.op for i in gpu.ops.issues} >= {"SHAPE", "PACK"}
    mcu = convert(
        digits.model,
        tmp_path,
        ConversionConfig(
            to=Format.TFLITE, target=Target.MCU, calibration=digits.calibration, latency_runs=5
        ),
    )
    assert [i for i in mcu.ops.issues if "float" in i.reason] == []


def test_onnx_npu_check_flags_float_ops(converted: dict[str, Path]) -> None:
    from converters.targets import check_onnx

    assert check_onnx(converted["onnx-fp32"], Target.NPU).issues
    assert not any(i.op == "Conv" for i in check_onnx(converted["onnx-int8"], Target.NPU).issues)


def test_gate_accepts(digits: Trained, tmp_path: Path) -> None:
    cfg = _cfg(
        digits, Format.TFLITE, Mode.INT8, gates=Gates(max_accuracy_drop=2.0, min_agreement=0.95)
    )
    report = convert(digits.model, tmp_path, cfg)
    assert report.status is Status.ACCEPTED
    report.raise_for_status()
