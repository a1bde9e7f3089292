"""Packaging: a training run and a converted model into one signed bundle.

The manifest carries what a device and the central service need besides the model: the model's
input and output signature (with quantization parameters), the preprocessing, labels, the
baseline profile, evaluation and conversion fidelity metrics, sample inputs with the outputs they
must give (the device's smoke test), and the runtime the model needs. :mod:`edgeops.core.bundle`
writes the file and signs the canonical manifest.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.core.bundle import write_bundle
from edgeops.core.errors import GateError, ModelError, OutputError, UsageError
from edgeops.core.files import sha256_file
from edgeops.core.profile import Profile, profile_class_outputs, profile_regression_outputs
from edgeops.core.signing import SigningKey
from edgeops.packaging import modelinfo
from edgeops.trainer.run import Run

BUNDLE_SUFFIX = ".bundle"
SAMPLES_FILE = "samples.npz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# Semantic versions that are PEP 440 versions too (devices order them with PEP 440):
# MAJOR.MINOR.PATCH, optionally a pre-release -aN, -bN or -rcN (1.2.0-rc1 is 1.2.0rc1 there).
_NUMBER = r"(0|[1-9][0-9]{0,8})"
_VERSION = re.compile(rf"^{_NUMBER}(\.{_NUMBER}){{2}}(-(a|b|rc){_NUMBER})?$")


@dataclass(frozen=True)
class PackageConfig:
    """What ``edgeops package`` needs besides the run and the model."""

    version: str
    """The bundle's version, such as ``1.4.0``."""
    name: str | None = None
    """The model's name; the run's by default."""
    parent: str | None = None
    """The version this one replaces, if any."""
    samples: int = 8
    """Test inputs stored with the outputs they must give."""
    force: bool = False
    """Replace a bundle file of the same name; otherwise an existing one is refused."""

    def checked(self) -> PackageConfig:
        for label, value in (("--version", self.version), ("--parent", self.parent)):
            if value is not None and not _VERSION.match(value):
                raise UsageError(
                    f"{label} {value!r}: not a semantic version; use MAJOR.MINOR.PATCH such as "
                    "1.0.0, optionally with -aN, -bN or -rcN (devices order versions)"
                )
        if self.name is not None and not _NAME.match(self.name):
            raise UsageError(f"--name {self.name!r}: use letters, digits and . _ + -")
        if not 1 <= self.samples <= 256:
            raise UsageError("--samples must be between 1 and 256")
        return self


def bundle_path(out: Path, name: str, version: str) -> Path:
    """``out`` itself when it ends in ``.bundle``, else ``out/NAME-VERSION.bundle``."""
    return out if out.suffix == BUNDLE_SUFFIX else out / f"{name}-{version}{BUNDLE_SUFFIX}"


def conversion_report(model: Path) -> dict[str, Any] | None:
    """The report ``edgeops convert`` wrote beside ``model``, checked to belong to it."""
    path = model.with_name(model.name + ".report.json")
    if not path.is_file():
        return None
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable conversion report ({e})") from None
    if report.get("artifact", {}).get("sha256") != sha256_file(model):
        raise ModelError(f"{path}: the report describes a different model file than {model.name}")
    if report.get("status") == "rejected":
        raise GateError(
            f"{model.name} was rejected by its conversion gates: {'; '.join(report['reasons'])}"
        )
    return report


def package(
    run: Run | str | Path,
    model: str | Path,
    out: str | Path,
    config: PackageConfig,
    *,
    key: SigningKey | None,
    report: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle of ``model`` (a .tflite or .onnx converted from ``run``'s model).

    ``report`` is the conversion's report (``ConversionReport.to_dict()``) when the caller holds
    it; otherwise the one ``edgeops convert`` wrote beside the model is read, if any."""
    from device_agent.runtimes import open_runtime, run_float

    cfg = config.checked()
    r = run if isinstance(run, Run) else Run.load(run)
    model_path = Path(model)
    if not model_path.is_file():
        raise ModelError(f"{model_path}: no such model file")
    dest = bundle_path(Path(out), cfg.name or r.name, cfg.version)
    if dest.exists() and not cfg.force:
        raise OutputError(f"{dest} exists: pass --force to replace it, or a new --version")
    fmt = model_path.suffix.lower().lstrip(".")
    if fmt not in ("tflite", "onnx"):
        raise ModelError(f"{model_path}: package a converted .tflite or .onnx model")
    if report is None:
        report = conversion_report(model_path)
    pre = r.preprocessing
    with np.load(r.split("test")) as z:
        x_test = z["x"][: cfg.samples]
    with np.load(r.split("validation")) as z:
        x_val = z["x"]

    with open_runtime(model_path) as rt:
        if len(rt.inputs) != 1:
            raise ModelError(f"{model_path}: models with one input are supported")
        expected = (pre.width,) if pre.kind == "tabular" else pre.shape
        got = tuple(int(s) for s in rt.inputs[0].sample_shape)
        if got != expected:
            raise ModelError(
                f"{model_path}: model input has shape {got}, but run {r.directory} feeds "
                f"{expected}; was it converted from this run's model?"
            )
        outputs = run_float(rt, x_test)
        val_outputs = np.concatenate(
            [run_float(rt, x_val[i : i + 256])[0] for i in range(0, len(x_val), 256)]
        )
        inputs_info = [t.to_dict() for t in rt.inputs]
        outputs_info = [t.to_dict() for t in rt.outputs]
        quantized = [t for t in rt.outputs if t.quantized]
    if r.task == "classification" and outputs[0].shape[-1] != len(r.classes):
        raise ModelError(
            f"{model_path}: {outputs[0].shape[-1]} outputs, "
            f"but the run has {len(r.classes)} classes"
        )
    atol = max([1e-4] + [1.01 * float(t.scale or 0.0) for t in quantized])

    samples = io.BytesIO()
    arrays: dict[str, Any] = {"inputs": x_test.astype(np.float32)}
    arrays.update({f"output_{i}": o for i, o in enumerate(outputs)})
    np.savez(samples, **arrays)

    evaluation = r.evaluation
    name = cfg.name or r.name
    model_file = f"model.{fmt}"
    manifest: dict[str, Any] = {
        "name": name,
        "version": cfg.version,
        "parent": cfg.parent,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "file": model_file,
            "format": fmt,
            "mode": None if report is None else report["settings"].get("mode"),
            "target": None if report is None else report["settings"].get("target"),
        },
        "task": r.task,
        "labels": list(r.classes),
        "signature": {"inputs": inputs_info, "outputs": outputs_info},
        "preprocessing": pre.to_dict(),
        "baseline": _baseline(r, val_outputs),
        "evaluation": {
            "test": evaluation["test"],
            "validation": evaluation["validation"],
            "blessed": evaluation["blessing"]["blessed"],
        },
        "fidelity": None if report is None else report.get("fidelity"),
        "conversion": None
        if report is None
        else {
            "status": report["status"],
            "size_ratio": report["size_ratio"],
            "latency": report["latency"],
            "versions": report.get("versions", {}),
        },
        "samples": {
            "file": SAMPLES_FILE,
            "count": len(x_test),
            "atol": atol,
            "rtol": 1e-3,
        },
        "min_runtime": runtime_requirements(model_path),
        "training": {
            "run": r.name,
            "data_sha256": _data_sha(r),
            "target": r.target,
        },
    }
    files = {model_file: model_path.read_bytes(), SAMPLES_FILE: samples.getvalue()}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{dest.parent}: cannot create directory ({e})") from None
    return write_bundle(dest, manifest, files, key=key)


def _baseline(r: Run, val_outputs: Any) -> dict[str, Any]:
    """The run's baseline, with the output distribution of the converted model itself on the
    validation split (what the device will run), not of the Keras model."""
    p = Profile.from_dict(r.baseline)
    outputs: tuple[Any, ...]
    if r.task == "classification":
        outputs = (profile_class_outputs(val_outputs, r.classes),)
    else:
        outputs = profile_regression_outputs("prediction", val_outputs, p.n_bins)
    return Profile(p.inputs, outputs, p.n_bins).to_dict()


def _data_sha(r: Run) -> str | None:
    try:
        data: dict[str, Any] = json.loads((r.directory / "run.json").read_text())["data"]
        return str(data["sha256"])
    except (OSError, ValueError, KeyError):
        return None


def runtime_requirements(path: Path) -> dict[str, Any]:
    """The runtime requirements of a ``.tflite`` or ``.onnx`` model, for a bundle's manifest."""
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        from device_agent.runtimes import TFLiteRuntime

        with TFLiteRuntime(path, default_delegates=False) as rt:
            ops = sorted({name for name, _ in rt.ops()})
        return {
            "format": "tflite",
            "min_runtime_version": modelinfo.tflite_min_runtime(path.read_bytes()),
            "ops": ops,
        }
    if suffix == ".onnx":
        from edgeops.core.optional import require

        onnx = require("onnx", "convert")
        model = onnx.load(str(path), load_external_data=False)
        return {
            "format": "onnx",
            "ir_version": int(model.ir_version),
            "opsets": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
            "ops": sorted({n.op_type for n in model.graph.node}),
        }
    raise ModelError(f"{path}: unsupported model type '{suffix}' (expected .tflite or .onnx)")
