"""``convert(src, out_dir, config)``: convert, measure, gate, and write artifact and report.

Everything is written into a staging directory inside ``out_dir`` first and moved into place only
when complete, so a failure leaves no file that looks like a finished conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy.typing as npt

from converters import targets
from converters.calibration import pick_samples
from converters.config import ConversionConfig, Format, IOType, Mode
from converters.fidelity import Fidelity, compare
from converters.report import ConversionReport, Status
from converters.sensitivity import NodeError, node_errors
from converters.sources import Source
from converters.to_onnx import to_onnx
from converters.to_tflite import to_tflite
from device_agent.benchmark import BenchConfig, benchmark
from device_agent.runtimes import open_runtime, run_feeds
from edgeops.core import datafiles
from edgeops.core.datafiles import model_feeds
from edgeops.core.errors import ConversionError, EdgeOpsError, OutputError, UsageError, cause
from edgeops.core.feeds import Feeds, random_feeds

log = logging.getLogger(__name__)
progress = logging.getLogger("edgeops.progress")
"""What a conversion is doing, for a person watching (the CLI shows it on stderr)."""

_VERSIONED = ("edgeops", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


def artifact_names(name: str, cfg: ConversionConfig, rejected: bool) -> tuple[str, str]:
    """File names of the model and its report inside the output directory.

    ``digits.int8.tflite`` and ``digits.int8.tflite.report.json``; int8 inputs and outputs add
    ``-int8io`` to the mode, a failed gate adds ``.rejected``.
    """
    mode = f"{cfg.mode}-int8io" if cfg.io is IOType.INT8 else str(cfg.mode)
    model = f"{name}.{mode}" + (".rejected" if rejected else "") + f".{cfg.to}"
    return model, f"{model}.report.json"


def convert(src: str | Path, out_dir: str | Path, config: ConversionConfig) -> ConversionReport:
    """Convert ``src`` as ``config`` says; write the model and its report into ``out_dir``.

    Returns the report. A model that misses a gate is still written, under a ``.rejected`` name
    and with ``status: rejected`` in its report; call ``report.raise_for_status()`` to turn that
    into an error.
    """
    cfg = config.resolved()
    src = Path(src)
    out = Path(out_dir)
    calibration = datafiles.load(cfg.calibration) if cfg.calibration else None
    validation = datafiles.load(cfg.validation) if cfg.validation else None
    staging = _make_staging(out)
    try:
        with Source(src) as source:
            _check_route(source, cfg)
            calib = None
            if calibration is not None:
                found = model_feeds(calibration, source.inputs, "calibration data")
                calib = pick_samples(found, cfg.calibration_samples, cfg.seed)
            val = model_feeds(validation, source.inputs, "validation data") if validation else None
            if val is None and calib is None:
                # Fail before converting when the latency could not be measured at a real size.
                random_feeds(source.inputs, dict(cfg.shapes))
            log.info("converting %s (%s) to %s %s", src, source.kind, cfg.to, cfg.mode)
            progress.info(
                "convert: %s to %s %s%s",
                src.name,
                cfg.to.value,
                "" if cfg.mode is None else cfg.mode.value,
                ""
                if calib is None or cfg.mode not in (Mode.INT8, Mode.INT16X8)
                else f", calibrating on {len(calib)} samples",
            )
            name = cfg.name or src.stem
            staged = staging / artifact_names(name, cfg, rejected=False)[0]
            labels = None if validation is None else validation.y
            steps: list[str] = []
            prepared = None
            fidelity = None
            if cfg.to is Format.TFLITE:
                blob = to_tflite(source, cfg, calib)
                staged.write_bytes(blob)
                if val is not None:
                    fidelity = _fidelity(source, staged, val, labels, cfg, staging)
            else:
                blob, steps, prepared, fidelity = _to_onnx(
                    source, cfg, calib, val, labels, staging, staged
                )
            sensitivity: tuple[NodeError, ...] = ()
            if cfg.sensitivity and prepared is not None and val is not None:
                sensitivity = node_errors(prepared, staged, val, cfg.threads)
            source_info = {"path": str(src), "kind": source.kind.value, "bytes": source.size_bytes}
        data = val if val is not None else calib
        timed = data.one_call(0) if data is not None and not cfg.shapes else None
        progress.info("convert: measuring latency (%d runs)", cfg.latency_runs)
        report = _measure(staged, cfg, source_info, fidelity, blob, timed, staging)
        report = replace(report, steps=tuple(steps), sensitivity=sensitivity)
        return _commit(staging, staged, out, name, cfg, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _to_onnx(
    source: Source,
    cfg: ConversionConfig,
    calib: Feeds | None,
    val: Feeds | None,
    labels: npt.NDArray[Any] | None,
    staging: Path,
    staged: Path,
) -> tuple[bytes, list[str], Path | None, Fidelity | None]:
    """Convert to ONNX and measure; a quantized model that misses a fidelity gate is made again
    the other ways :func:`_retries` lists, and the best of them kept (fewest gates missed, then
    the highest lowest-output SNR)."""
    work = staging / "work"
    work.mkdir()
    result = to_onnx(source, cfg, calib, work)
    staged.write_bytes(result.blob)
    if val is None:
        return result.blob, result.steps, result.prepared, None
    fidelity = _fidelity(source, staged, val, labels, cfg, staging)
    missed = _fidelity_gates(cfg, fidelity)
    if cfg.mode not in (Mode.INT8, Mode.DYNAMIC) or not missed or cfg.onnx.exclude_nodes:
        return result.blob, result.steps, result.prepared, fidelity
    best, best_fid, history = result, fidelity, []
    for k, (what, options) in enumerate(_retries(cfg)):
        retry_work = staging / f"work-retry-{k}"
        retry_work.mkdir()
        retry_file = staging / f"retry-{k}{staged.suffix}"
        try:
            retry = to_onnx(source, cfg, calib, retry_work, **options)
            retry_file.write_bytes(retry.blob)
            found = _fidelity(source, retry_file, val, labels, cfg, staging)
        except EdgeOpsError as e:
            history.append(f"retry with {what} failed ({cause(e, 200)})")
            continue
        still = _fidelity_gates(cfg, found)
        if _rank(still, found) < _rank(missed, best_fid):
            os.replace(retry_file, staged)
            history.append(f"{_summary(missed, best_fid)}; with {what}: {_summary(still, found)}")
            best, best_fid, missed = retry, found, still
            if not missed:
                break
        else:
            history.append(f"retried with {what}: {_summary(still, found)}, no better")
    return best.blob, [*best.steps, *history], best.prepared, best_fid


def _rank(missed: list[str], f: Fidelity) -> tuple[int, float]:
    snr = f.min_snr_db
    return len(missed), -(math.inf if snr is None else snr)


def _summary(missed: list[str], f: Fidelity) -> str:
    snr = f.min_snr_db
    text = "exact" if snr is None else f"lowest output SNR {snr:.1f} dB"
    return text + (f", {len(missed)} gates missed" if missed else ", every gate met")


def _retries(cfg: ConversionConfig) -> list[tuple[str, dict[str, bool]]]:
    """What to try, in order, when a quantized model's outputs miss the SNR floor."""
    heads = ("the nodes making the outputs in float", {"float_heads": True})
    if cfg.mode is Mode.INT8 and cfg.onnx.per_channel is not False:
        return [
            ("per-tensor weight scales", {"per_tensor": True}),
            heads,
            (
                "per-tensor scales and the outputs in float",
                {"per_tensor": True, "float_heads": True},
            ),
        ]
    return [heads]


def _check_route(source: Source, cfg: ConversionConfig) -> None:
    if cfg.to is Format.TFLITE and not source.is_tensorflow:
        raise UsageError(
            f"{source.path}: {source.kind} to tflite is not supported; "
            "convert from the Keras model or SavedModel"
        )


def _make_staging(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".edgeops-staging-", dir=out))
    except OSError as e:
        raise OutputError(f"{out}: cannot write the output directory ({e.strerror})") from None


def _fidelity(
    source: Source,
    model: Path,
    feeds: Feeds,
    labels: npt.NDArray[Any] | None,
    cfg: ConversionConfig,
    staging: Path,
) -> Fidelity:
    progress.info("convert: checking fidelity on %d validation samples", len(feeds))
    reference = source.predict(feeds)
    try:
        with open_runtime(model, threads=cfg.threads) as rt:
            converted = run_feeds(rt, feeds)
    except Exception as e:  # a model that does not load, or the runtime's own exceptions
        raise ConversionError(
            f"the converted model does not run: {cause(e, hide=(str(staging),))}"
        ) from None
    names = [o.name for o in source.outputs]
    return compare(names, reference, converted, labels, cfg.task, cfg.map_threshold)


def _measure(
    model: Path,
    cfg: ConversionConfig,
    source_info: dict[str, Any],
    fidelity: Fidelity | None,
    blob: bytes,
    timed: list[npt.NDArray[Any]] | None,
    staging: Path,
) -> ConversionReport:
    bench_cfg = BenchConfig(threads=cfg.threads, runs=cfg.latency_runs, warmup=5, shapes=cfg.shapes)
    try:
        bench = benchmark(model, bench_cfg, timed)
    except EdgeOpsError as e:
        e.message = cause(e, hide=(str(staging),))  # the staged file's path means nothing
        e.args = (e.message,)
        raise e from None
    with open_runtime(model) as rt:
        inputs, outputs = rt.inputs, rt.outputs
    ops = targets.check(model, cfg.target)
    reasons = _gate(cfg, fidelity, ops)
    gated = fidelity is not None or cfg.gates.strict
    status = Status.UNGATED if not gated else (Status.REJECTED if reasons else Status.ACCEPTED)
    return ConversionReport(
        status=status,
        reasons=tuple(reasons),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        source=source_info,
        artifact={
            "file": model.name,
            "format": cfg.to.value,
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
        },
        settings=_settings(cfg),
        inputs=inputs,
        outputs=outputs,
        ops=ops,
        latency=bench.steady,
        fidelity=fidelity,
        quantization=tuple(targets.boundary_quantization(model)),
        versions=_versions(),
        latency_shapes=bench.input_shapes,
    )


def _gate(cfg: ConversionConfig, f: Fidelity | None, ops: targets.OpReport) -> list[str]:
    reasons = []
    if cfg.gates.strict:
        for issue in ops.issues:
            reasons.append(f"{issue.op} cannot run on {cfg.target}: {issue.reason}")
    return reasons if f is None else reasons + _fidelity_gates(cfg, f)


def _fidelity_gates(cfg: ConversionConfig, f: Fidelity) -> list[str]:
    """The fidelity gates ``f`` misses, as reasons."""
    g = cfg.gates
    reasons: list[str] = []
    if g.max_accuracy_drop is not None:
        drop = f.accuracy_drop_points
        if drop is None:
            raise UsageError(
                "--max-accuracy-drop needs a classifier and labelled validation data "
                f"(task: {f.task}, labels: {'yes' if f.labelled else 'no'})"
            )
        if drop > g.max_accuracy_drop:
            reasons.append(f"accuracy drop {drop:.2f} points > {g.max_accuracy_drop:g}")
    if g.min_agreement is not None:
        if f.agreement is None:
            raise UsageError(f"--min-agreement needs a classifier (task: {f.task})")
        if f.agreement < g.min_agreement:
            reasons.append(f"top-1 agreement {f.agreement:.4f} < {g.min_agreement:g}")
    if g.min_iou is not None:
        if f.min_iou is None:
            raise UsageError(
                f"--min-iou needs probability maps or detection scores (task: {f.task})"
            )
        if f.min_iou < g.min_iou:
            reasons.append(f"IoU of thresholded outputs {f.min_iou:.4f} < {g.min_iou:g}")
    if g.min_snr_db is not None:
        for o in f.outputs:
            if o.snr_db is not None and o.snr_db < g.min_snr_db:
                reasons.append(f"output '{o.name}' SNR {o.snr_db:.1f} dB < {g.min_snr_db:g} dB")
    return reasons


def _settings(cfg: ConversionConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for key in ("calibration", "validation"):
        d[key] = None if d[key] is None else str(d[key])
    d["shapes"] = {name: list(shape) for name, shape in cfg.shapes}
    return d


def _versions() -> dict[str, str]:
    found = {}
    for dist in _VERSIONED:
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "tensorflow" not in found:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found["tensorflow"] = importlib.metadata.version("tensorflow-cpu")
    return found


def _commit(
    staging: Path,
    staged: Path,
    out: Path,
    name: str,
    cfg: ConversionConfig,
    report: ConversionReport,
) -> ConversionReport:
    rejected = report.status is Status.REJECTED
    model_name, report_name = artifact_names(name, cfg, rejected)
    # A stale result of the same name and mode (accepted or rejected) must not sit beside this one.
    for flag in (False, True):
        for stale in artifact_names(name, cfg, flag):
            (out / stale).unlink(missing_ok=True)
    report = replace(report, artifact={**report.artifact, "file": model_name})
    report_tmp = staging / report_name
    report_tmp.write_text(report.to_json())
    try:
        os.replace(staged, out / model_name)
        os.replace(report_tmp, out / report_name)
    except OSError as e:
        (out / model_name).unlink(missing_ok=True)
        raise OutputError(f"{out}: cannot write the result ({e.strerror})") from None
    return report
