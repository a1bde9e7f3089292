"""``convert(src, out_dir, config)``: convert, measure, gate, and write artifact and report.

Everything is written into a staging directory inside ``out_dir`` first and moved into place only
when complete, so a failure leaves no file that looks like a finished conversion.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from converters import targets
from converters.calibration import pick_samples
from converters.config import ConversionConfig, Format, IOType
from converters.fidelity import Fidelity, compare
from converters.report import ConversionReport, Status
from converters.sources import Source
from converters.to_onnx import to_onnx
from converters.to_tflite import to_tflite
from device_agent.benchmark import BenchConfig, benchmark
from device_agent.runtimes import open_runtime, run_float
from edgeops import datafiles
from edgeops.datafiles import Dataset
from edgeops.errors import ConversionError, EdgeOpsError, OutputError, UsageError

log = logging.getLogger(__name__)

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
            info = source.inputs[0]
            calib = None
            if calibration is not None:
                x = datafiles.check_inputs(calibration, info, "calibration data")
                calib = pick_samples(x, cfg.calibration_samples, cfg.seed)
            log.info("converting %s (%s) to %s %s", src, source.kind, cfg.to, cfg.mode)
            blob = (
                to_tflite(source, cfg, calib)
                if cfg.to is Format.TFLITE
                else to_onnx(source, cfg, calib)
            )
            name = cfg.name or src.stem
            staged = staging / artifact_names(name, cfg, rejected=False)[0]
            staged.write_bytes(blob)
            fidelity = _fidelity(source, staged, validation, cfg) if validation else None
            source_info = {"path": str(src), "kind": source.kind.value, "bytes": source.size_bytes}
        report = _measure(staged, cfg, source_info, fidelity, blob)
        return _commit(staging, staged, out, name, cfg, report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def _fidelity(source: Source, model: Path, validation: Dataset, cfg: ConversionConfig) -> Fidelity:
    x = datafiles.check_inputs(validation, source.inputs[0], "validation data")
    reference = source.predict(x)
    try:
        with open_runtime(model, threads=cfg.threads) as rt:
            converted = _predict(rt, x)
    except EdgeOpsError as e:
        raise ConversionError(f"the converted model does not run: {e}") from None
    names = [o.name for o in source.outputs]
    return compare(names, reference, converted, validation.y, cfg.task)


def _predict(
    rt: Any, x: npt.NDArray[np.float32], batch: int = 256
) -> list[npt.NDArray[np.float32]]:
    parts = [run_float(rt, x[i : i + batch]) for i in range(0, len(x), batch)]
    return [np.concatenate(p, axis=0) for p in zip(*parts, strict=True)]


def _measure(
    model: Path,
    cfg: ConversionConfig,
    source_info: dict[str, Any],
    fidelity: Fidelity | None,
    blob: bytes,
) -> ConversionReport:
    bench = benchmark(model, BenchConfig(threads=cfg.threads, runs=cfg.latency_runs, warmup=5))
    with open_runtime(model) as rt:
        inputs, outputs = rt.inputs, rt.outputs
    reasons = _gate(cfg, fidelity)
    status = (
        Status.UNGATED if not cfg.gates.any else (Status.REJECTED if reasons else Status.ACCEPTED)
    )
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
        ops=targets.check(model, cfg.target),
        latency=bench.steady,
        fidelity=fidelity,
        quantization=tuple(targets.boundary_quantization(model)),
        versions=_versions(),
    )


def _gate(cfg: ConversionConfig, f: Fidelity | None) -> list[str]:
    g = cfg.gates
    if not g.any or f is None:
        return []
    reasons = []
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
    return reasons


def _settings(cfg: ConversionConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for key in ("calibration", "validation"):
        d[key] = None if d[key] is None else str(d[key])
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
