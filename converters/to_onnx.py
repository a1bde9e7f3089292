"""Any source to ONNX (tf2onnx), then onnxruntime quantization: float16, dynamic, static int8."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converters.calibration import OnnxCalibrationReader
from converters.config import CalibrationMethod, ConversionConfig, Mode, QuantFormat
from converters.sources import Source, SourceKind
from edgeops.errors import ConversionError, UsageError, first_line
from edgeops.optional import require

log = logging.getLogger(__name__)


def to_onnx(
    source: Source, cfg: ConversionConfig, calibration: npt.NDArray[np.float32] | None
) -> bytes:
    """Convert ``source`` to ONNX in the resolved ``cfg`` mode; returns the serialized model."""
    onnx = require("onnx", "convert")
    with tempfile.TemporaryDirectory(prefix="edgeops-onnx-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        _export_fp32(source, cfg.opset, fp32)
        mode = cfg.mode
        out = work / "out.onnx"
        try:
            if mode is Mode.FP32:
                out = fp32
            elif mode is Mode.FLOAT16:
                float16 = require("onnxconverter_common.float16", "convert")
                model = float16.convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
                onnx.save(model, str(out))
            elif mode is Mode.DYNAMIC:
                q = require("onnxruntime.quantization", "convert")
                q.quantize_dynamic(
                    str(_preprocessed(fp32, work)),
                    str(out),
                    weight_type=q.QuantType.QInt8,
                    per_channel=cfg.onnx.per_channel,
                )
            elif mode is Mode.INT8:
                assert calibration is not None
                _quantize_static(fp32, out, work, cfg, source.inputs[0].name, calibration)
            else:
                raise UsageError(f"mode {mode} is not available for ONNX")
        except (UsageError, ConversionError):
            raise
        except Exception as e:
            raise ConversionError(
                f"ONNX quantization ({mode}) failed: {first_line(e, 300)}"
            ) from None
        return out.read_bytes()


def _export_fp32(source: Source, opset: int, dst: Path) -> None:
    tf2onnx = require("tf2onnx", "convert")
    try:
        if source.kind is SourceKind.ONNX:
            shutil.copyfile(source.path, dst)
            return
        if source.kind is SourceKind.TFLITE:
            model, _ = tf2onnx.convert.from_tflite(str(source.path), opset=opset)
        else:
            tf = require("tensorflow", "convert")
            constants = require("tensorflow.python.framework.convert_to_constants", "convert")
            sig = source.signature
            _, kw = sig.structured_input_signature
            specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in kw.items()]
            # Freeze first: tf2onnx turns tensors the function captures (such as a Keras
            # Normalization layer's mean and variance) into extra graph inputs otherwise.
            frozen = constants.convert_variables_to_constants_v2(sig)
            names = sorted(sig.structured_outputs)  # the order of the frozen outputs

            def call(x: Any) -> Any:
                return dict(zip(names, frozen(x), strict=True))

            model, _ = tf2onnx.convert.from_function(
                tf.function(call), input_signature=specs, opset=opset
            )
    except Exception as e:
        raise ConversionError(
            f"ONNX export of {source.path} failed: {first_line(e, 300)}"
        ) from None
    onnx = require("onnx", "convert")
    onnx.save(model, str(dst))


def _preprocessed(fp32: Path, work: Path) -> Path:
    """onnxruntime's quantization pre-processing: symbolic shape inference, graph optimisation."""
    shape_inference = require("onnxruntime.quantization.shape_inference", "convert")
    pre = work / "pre.onnx"
    shape_inference.quant_pre_process(str(fp32), str(pre))
    return pre


def _quantize_static(
    fp32: Path,
    out: Path,
    work: Path,
    cfg: ConversionConfig,
    input_name: str,
    calibration: npt.NDArray[np.float32],
) -> None:
    q = require("onnxruntime.quantization", "convert")
    settings = cfg.onnx
    src = _preprocessed(fp32, work) if settings.preprocess else fp32
    method = {
        CalibrationMethod.MINMAX: q.CalibrationMethod.MinMax,
        CalibrationMethod.ENTROPY: q.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: q.CalibrationMethod.Percentile,
    }[settings.method]
    fmt = q.QuantFormat.QDQ if settings.format is QuantFormat.QDQ else q.QuantFormat.QOperator
    q.quantize_static(
        str(src),
        str(out),
        OnnxCalibrationReader(input_name, calibration),
        quant_format=fmt,
        per_channel=settings.per_channel,
        activation_type=q.QuantType.QUInt8,
        weight_type=q.QuantType.QInt8,
        calibrate_method=method,
    )
