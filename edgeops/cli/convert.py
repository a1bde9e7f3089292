"""``edgeops convert``: options to a ``ConversionConfig``, then ``converters.convert``."""

from __future__ import annotations

from pathlib import Path

import click

from edgeops.cli.aliases import deprecated
from edgeops.core.errors import UsageError
from edgeops.core.feeds import parse_shape
from edgeops.core.optional import require

DEFAULT_MIN_SNR_DB = 12.0
"""converters.config.DEFAULT_MIN_SNR_DB, repeated so that --help does not import converters."""


def _snr_floor(text: str | None) -> float | None:
    if text is None:
        return DEFAULT_MIN_SNR_DB
    if text.strip().lower() in ("off", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--min-snr {text!r}: a number of dB, or 'off'") from None


def _enum_choice(values: list[str]) -> click.Choice[str]:
    return click.Choice(values, case_sensitive=False)


@click.command()
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "--to", "to", required=True, type=_enum_choice(["tflite", "onnx"]), help="Output format."
)
@click.option(
    "--quantize",
    "mode",
    default=None,
    metavar="MODE",
    help="fp32 | float16 | dynamic | int8 | int16x8 (TFLite only). "
    "Default: the target's (cpu fp32, gpu float16, npu/mcu int8).",
)
@click.option(
    "--hw-target",
    "target",
    default=None,
    type=_enum_choice(["cpu", "gpu", "npu", "mcu"]),
    help="Hardware class: picks defaults and checks the ops.  [default: cpu]",
)
@click.option(
    "--target",
    "old_target",
    default=None,
    hidden=True,
    type=_enum_choice(["cpu", "gpu", "npu", "mcu"]),
    help="Deprecated name of --hw-target (--target is the label column in other commands).",
)
@click.option(
    "--io",
    "io",
    default=None,
    type=_enum_choice(["float", "int8"]),
    help="Input/output dtype of a full-integer TFLite model (default: int8 for npu/mcu).",
)
@click.option(
    "--out", "out", required=True, type=click.Path(path_type=Path), help="Output directory."
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help="Representative inputs (.npz, .npy or .csv) for int8 and int16x8.",
)
@click.option(
    "--calibration-samples",
    default=500,
    show_default=True,
    help="Samples drawn from the calibration file.",
)
@click.option(
    "--validation",
    type=click.Path(path_type=Path),
    default=None,
    help="Inputs with labels (.npz x/y, or .csv with a label column) for the fidelity "
    "report and the gates.",
)
@click.option(
    "--task",
    default="auto",
    show_default=True,
    type=_enum_choice(["auto", "classification", "regression", "dense", "detection"]),
    help="What the outputs mean; picks the fidelity measures (auto: inferred and shown).",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    metavar="POINTS",
    help="Reject when accuracy drops by more than this many percentage points.",
)
@click.option(
    "--min-agreement",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Reject when top-1 agreement with the source is below this (e.g. 0.99).",
)
@click.option(
    "--min-snr",
    default=None,
    metavar="DB|off",
    help=f"Reject when an output's SNR against the source is below DB "
    f"(default {DEFAULT_MIN_SNR_DB:g} with --validation; 'off' for no floor).",
)
@click.option(
    "--min-iou",
    type=float,
    default=None,
    metavar="FRACTION",
    help="Reject when the IoU of thresholded maps or detection scores is below this.",
)
@click.option(
    "--map-threshold",
    type=float,
    default=0.5,
    show_default=True,
    help="Threshold of probability maps and detection scores for the IoU.",
)
@click.option("--strict", is_flag=True, help="Reject a model with ops the --hw-target cannot run.")
@click.option(
    "--exclude-op",
    "exclude_ops",
    multiple=True,
    metavar="TYPE",
    help="ONNX op type to keep in float (repeatable), e.g. MatMul.",
)
@click.option(
    "--exclude-node",
    "exclude_nodes",
    multiple=True,
    metavar="NAME",
    help="ONNX node to keep in float (repeatable; names as --sensitivity lists them).",
)
@click.option(
    "--only-op",
    "only_ops",
    multiple=True,
    metavar="TYPE",
    help="Quantize only these ONNX op types (repeatable), e.g. --only-op MatMul.",
)
@click.option(
    "--sensitivity",
    is_flag=True,
    help="Report the error each node of the quantized ONNX model adds (needs --validation).",
)
@click.option(
    "--shape",
    "shapes",
    multiple=True,
    metavar="NAME=DxD..",
    help="Input shape for the latency measurement when no data file gives one.",
)
@click.option(
    "--onnx-format",
    default="qdq",
    show_default=True,
    type=_enum_choice(["qdq", "qoperator"]),
    help="ONNX static int8 graph form.",
)
@click.option(
    "--per-channel/--per-tensor",
    default=None,
    help="ONNX weight scale granularity (default: per channel for int8, per tensor for dynamic).",
)
@click.option(
    "--calibration-method",
    default="minmax",
    show_default=True,
    type=_enum_choice(["minmax", "entropy", "percentile"]),
    help="ONNX static int8 calibration.",
)
@click.option(
    "--no-preprocess", is_flag=True, help="Skip onnxruntime's quantization pre-processing."
)
@click.option("--opset", default=17, show_default=True, help="ONNX opset for tf2onnx.")
@click.option("--name", default=None, help="Base name of the output files (default: source stem).")
@click.option(
    "--threads",
    default=1,
    show_default=True,
    help="Interpreter threads for the latency measurement.",
)
@click.option("--latency-runs", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def convert(
    src: Path,
    to: str,
    mode: str | None,
    target: str | None,
    old_target: str | None,
    io: str | None,
    out: Path,
    calibration: Path | None,
    calibration_samples: int,
    validation: Path | None,
    task: str,
    max_accuracy_drop: float | None,
    min_agreement: float | None,
    min_snr: str | None,
    min_iou: float | None,
    map_threshold: float,
    strict: bool,
    exclude_ops: tuple[str, ...],
    exclude_nodes: tuple[str, ...],
    only_ops: tuple[str, ...],
    sensitivity: bool,
    shapes: tuple[str, ...],
    onnx_format: str,
    per_channel: bool | None,
    calibration_method: str,
    no_preprocess: bool,
    opset: int,
    name: str | None,
    threads: int,
    latency_runs: int,
    as_json: bool,
) -> None:
    """Convert SRC (.keras, SavedModel dir, .onnx, .tflite) and report what it cost."""
    if old_target is not None:
        if target is not None:
            raise UsageError("give --hw-target only (--target is its old name)")
        deprecated("--target", "--hw-target")
        target = old_target
    target = target or "cpu"
    conv = require("converters", "convert")
    cfg = conv.ConversionConfig(
        to=conv.Format(to.lower()),
        mode=None if mode is None else conv.config.parse_mode(mode),
        target=conv.Target(target.lower()),
        io=None if io is None else conv.IOType(io.lower()),
        calibration=calibration,
        calibration_samples=calibration_samples,
        validation=validation,
        task=conv.Task(task.lower()),
        onnx=conv.OnnxQuantization(
            format=conv.QuantFormat(onnx_format.lower()),
            per_channel=per_channel,
            method=conv.CalibrationMethod(calibration_method.lower()),
            preprocess=not no_preprocess,
            exclude_ops=exclude_ops,
            exclude_nodes=exclude_nodes,
            only_ops=only_ops,
        ),
        opset=opset,
        gates=conv.Gates(
            max_accuracy_drop=max_accuracy_drop,
            min_agreement=min_agreement,
            min_snr_db=_snr_floor(min_snr),
            min_iou=min_iou,
            strict=strict,
        ),
        latency_runs=latency_runs,
        threads=threads,
        shapes=tuple(parse_shape(t) for t in shapes),
        map_threshold=map_threshold,
        sensitivity=sensitivity,
        name=name,
    )
    report = conv.convert(src, out, cfg)
    click.echo(report.to_json() if as_json else report.table())
    report.raise_for_status()
