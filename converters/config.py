"""Typed conversion settings, target defaults, and the combinations that cannot work."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from edgeops.core.errors import UsageError


class Format(StrEnum):
    TFLITE = "tflite"
    ONNX = "onnx"


class Mode(StrEnum):
    """What to quantize, and to which precision."""

    FP32 = "fp32"
    """No quantization."""
    FLOAT16 = "float16"
    """Weights stored as float16."""
    DYNAMIC = "dynamic"
    """Dynamic range: int8 weights, activations quantized on the fly; needs no data."""
    INT8 = "int8"
    """Full integer: int8 weights and activations, calibrated on representative data."""
    INT16X8 = "int16x8"
    """TFLite only: int16 activations, int8 weights, calibrated."""

    @property
    def needs_calibration(self) -> bool:
        return self in (Mode.INT8, Mode.INT16X8)


MODE_ALIASES = {"fp16": Mode.FLOAT16, "float32": Mode.FP32, "dynamic-range": Mode.DYNAMIC}


def parse_mode(text: str) -> Mode:
    key = text.strip().lower()
    if key in MODE_ALIASES:
        return MODE_ALIASES[key]
    try:
        return Mode(key)
    except ValueError:
        names = ", ".join(m.value for m in Mode)
        raise UsageError(f"unknown quantization mode '{text}' (choose from {names})") from None


class Target(StrEnum):
    """The hardware class the model is for; picks defaults and the op check."""

    CPU = "cpu"
    GPU = "gpu"
    NPU = "npu"
    MCU = "mcu"


class IOType(StrEnum):
    """Dtype of the model's inputs and outputs for full-integer TFLite models."""

    FLOAT = "float"
    INT8 = "int8"


class Task(StrEnum):
    """What the model's outputs mean; picks the fidelity measures (see ``converters.fidelity``)."""

    AUTO = "auto"
    CLASSIFICATION = "classification"
    REGRESSION = "regression"
    DENSE = "dense"
    """Maps or feature tensors per sample (segmentation, text detection, embeddings)."""
    DETECTION = "detection"
    """Boxes and scores per anchor."""


class QuantFormat(StrEnum):
    """ONNX static quantization graph form."""

    QDQ = "qdq"
    QOPERATOR = "qoperator"


class CalibrationMethod(StrEnum):
    MINMAX = "minmax"
    ENTROPY = "entropy"
    PERCENTILE = "percentile"


TARGET_DEFAULT_MODE = {
    Target.CPU: Mode.FP32,
    Target.GPU: Mode.FLOAT16,
    Target.NPU: Mode.INT8,
    Target.MCU: Mode.INT8,
}
INTEGER_TARGETS = (Target.NPU, Target.MCU)


@dataclass(frozen=True)
class OnnxQuantization:
    """Settings of onnxruntime's static int8 quantization (ONNX ``int8`` mode only).

    The defaults were chosen by measurement on this project's benchmark; see the README.
    """

    format: QuantFormat = QuantFormat.QDQ
    per_channel: bool | None = None
    """Per-channel weight scales; None: per channel for int8, per tensor for dynamic (dynamic
    per-channel MatMuls ran 2x slower and lost 1 dB on PP-OCR recognition)."""
    method: CalibrationMethod = CalibrationMethod.MINMAX
    preprocess: bool = True
    """Run onnxruntime's quantization pre-processing (shape inference, graph optimisation) first;
    when symbolic shape inference fails on a model, it is run without it (said in the report)."""
    exclude_ops: tuple[str, ...] = ()
    """ONNX op types kept in float (``MatMul``, ``Conv``...)."""
    exclude_nodes: tuple[str, ...] = ()
    """Node names kept in float (of the pre-processed graph, as the sensitivity report lists)."""
    only_ops: tuple[str, ...] = ()
    """Quantize only these op types (empty: every op type the quantizer knows)."""


DEFAULT_MIN_SNR_DB = 12.0
"""The SNR floor every output of a validated conversion must reach unless told otherwise.

On this project's corpus (``converters.corpus``), conversions that kept the model's answers
measured 13 dB (PP-OCR angle classifier, int8: 97 % agreement) to over 100 dB (float16); broken
ones measured 6 dB and below (PP-OCR recognition with dynamically quantized convolutions: -0.4 dB,
39 % agreement; BlazeFace int8 per channel: -18 dB). Between them, 8 to 11 dB, are int8 results
that lost part of the answer (PP-OCR detection: text-map IoU 0.85; recognition: 88 % agreement):
rejected by default, kept with ``--min-snr`` lower or ``off``."""


@dataclass(frozen=True)
class Gates:
    """Acceptance thresholds; a model that misses one is kept but marked rejected."""

    max_accuracy_drop: float | None = None
    """Largest allowed drop of the task metric, in percentage points (classifiers)."""
    min_agreement: float | None = None
    """Smallest allowed top-1 agreement with the source model, as a fraction (0..1)."""
    min_snr_db: float | None = DEFAULT_MIN_SNR_DB
    """Smallest allowed SNR of every output against the source, in dB; None: no floor."""
    min_iou: float | None = None
    """Smallest allowed IoU of thresholded maps or scores (dense and detection tasks)."""
    strict: bool = False
    """Reject a model with ops the ``--target`` cannot run."""

    @property
    def any(self) -> bool:
        """Whether a gate that needs validation data was asked for explicitly."""
        return (
            self.max_accuracy_drop is not None
            or self.min_agreement is not None
            or self.min_iou is not None
        )


@dataclass(frozen=True)
class ConversionConfig:
    """Everything ``edgeops convert`` needs besides the source and output paths."""

    to: Format
    mode: Mode | None = None
    """None: the target's default (cpu fp32, gpu float16, npu and mcu int8)."""
    target: Target = Target.CPU
    io: IOType | None = None
    """Full-integer TFLite I/O; None: int8 for npu and mcu, float otherwise."""
    calibration: Path | None = None
    calibration_samples: int = 500
    """Representative samples used for calibration (drawn evenly from the file, seeded)."""
    validation: Path | None = None
    task: Task = Task.AUTO
    onnx: OnnxQuantization = field(default_factory=OnnxQuantization)
    opset: int = 17
    gates: Gates = field(default_factory=Gates)
    latency_runs: int = 50
    threads: int | None = 1
    """Interpreter threads for the host latency measurement."""
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """Input shapes for the latency measurement when there is no data file to take them from."""
    map_threshold: float = 0.5
    """Threshold of the IoU of probability maps and detection scores."""
    sensitivity: bool = False
    """Also measure the error each node of a quantized ONNX model adds (a per-node report)."""
    name: str | None = None
    """Base name of the written files; None: the source file's stem."""
    seed: int = 0

    def resolved(self) -> ConversionConfig:
        """Fill target defaults and reject combinations that cannot work."""
        mode = self.mode or TARGET_DEFAULT_MODE[self.target]
        integer_io = (
            self.to is Format.TFLITE and mode is Mode.INT8 and self.target in INTEGER_TARGETS
        )
        io = self.io or (IOType.INT8 if integer_io else IOType.FLOAT)
        cfg = replace(self, mode=mode, io=io)
        cfg._check()
        return cfg

    def _check(self) -> None:
        mode, target = self.mode, self.target
        assert mode is not None
        if self.to is Format.ONNX and target is Target.MCU:
            raise UsageError("target mcu needs --to tflite (microcontrollers run LiteRT Micro)")
        if target in INTEGER_TARGETS and mode not in (Mode.INT8, Mode.INT16X8):
            raise UsageError(
                f"mode {mode} cannot run on a {target} target: it needs full-integer "
                "quantization (--quantize int8)"
            )
        if mode is Mode.INT16X8 and self.to is Format.ONNX:
            raise UsageError("mode int16x8 is a TFLite mode; for ONNX use int8")
        if mode.needs_calibration and self.calibration is None:
            raise UsageError(f"mode {mode} needs representative data: pass --calibration FILE")
        if self.io is IOType.INT8 and not (self.to is Format.TFLITE and mode is Mode.INT8):
            raise UsageError("int8 inputs and outputs need --to tflite with --quantize int8")
        if self.calibration_samples < 1:
            raise UsageError("--calibration-samples must be at least 1")
        if self.latency_runs < 1:
            raise UsageError("--latency-runs must be at least 1")
        g = self.gates
        if g.any and self.validation is None:
            raise UsageError(
                "--max-accuracy-drop, --min-agreement and --min-iou need --validation FILE"
            )
        if self.sensitivity and (self.to is not Format.ONNX or self.validation is None):
            raise UsageError("--sensitivity needs --to onnx and --validation FILE")
        if not 0.0 < self.map_threshold < 1.0:
            raise UsageError("--map-threshold is a probability between 0 and 1 (e.g. 0.5)")
        if g.min_iou is not None and not 0.0 <= g.min_iou <= 1.0:
            raise UsageError("--min-iou is a fraction between 0 and 1 (e.g. 0.9)")
        o = self.onnx
        if (o.exclude_ops or o.exclude_nodes or o.only_ops) and (
            self.to is not Format.ONNX or mode in (Mode.FP32,)
        ):
            raise UsageError(
                "--exclude-op, --exclude-node and --only-op apply to ONNX float16, dynamic "
                "and int8 conversions"
            )
        if o.only_ops and mode is Mode.FLOAT16:
            raise UsageError("--only-op applies to dynamic and int8 (float16: use --exclude-op)")
        if set(o.exclude_ops) & set(o.only_ops):
            both = ", ".join(sorted(set(o.exclude_ops) & set(o.only_ops)))
            raise UsageError(f"op type {both} is both excluded and the only one quantized")
        if g.min_agreement is not None and not 0.0 <= g.min_agreement <= 1.0:
            raise UsageError("--min-agreement is a fraction between 0 and 1 (e.g. 0.99)")
        if g.max_accuracy_drop is not None and g.max_accuracy_drop < 0:
            raise UsageError("--max-accuracy-drop is in percentage points and cannot be negative")
