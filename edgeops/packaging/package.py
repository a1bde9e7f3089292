"""Packaging: a training run and a converted model into one signed bundle.

The manifest carries what a device and the central service need besides the model: the model's
input and output signature (with quantization parameters), the preprocessing, labels, the
baseline profile, evaluation and conversion fidelity metrics, sample inputs with the outputs they
must give (the device's smoke test), and the runtime the model needs. :mod:`edgeops.core.bundle`
writes the file and signs the canonical manifest.

:func:`package` makes a bundle from a training run of this project's trainer and a model converted
from it; :func:`package_model` from any model (one input or several, made anywhere) and a file of
realistic inputs, which give the signature, the baseline and the samples. Such a bundle has no
evaluation section: the service then measures feature and output drift, and no concept drift
against a reference accuracy.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from edgeops.core import datafiles
from edgeops.core.bundle import write_bundle
from edgeops.core.errors import GateError, InputDataError, ModelError, OutputError, UsageError
from edgeops.core.feeds import Feeds
from edgeops.core.files import sha256_file
from edgeops.core.preprocessing import NamedInput, Preprocessing
from edgeops.core.profile import (
    InputProfile,
    OutputProfile,
    Profile,
    profile_class_outputs,
    profile_numeric,
    profile_regression_outputs,
    profile_tensor,
)
from edgeops.core.signing import SigningKey
from edgeops.core.tensors import TensorInfo
from edgeops.core.wire import MAX_BINS
from edgeops.packaging import modelinfo

if TYPE_CHECKING:
    from edgeops.trainer.run import Run

BUNDLE_SUFFIX = ".bundle"
SAMPLES_FILE = "samples.npz"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
# Semantic versions that are PEP 440 versions too (devices order them with PEP 440):
# MAJOR.MINOR.PATCH, optionally a pre-release -aN, -bN or -rcN (1.2.0-rc1 is 1.2.0rc1 there).
_NUMBER = r"(0|[1-9][0-9]{0,8})"
_VERSION = re.compile(rf"^{_NUMBER}(\.{_NUMBER}){{2}}(-(a|b|rc){_NUMBER})?$")
MIN_BASELINE_SAMPLES = 20
"""The fewest input samples :func:`package_model` profiles a baseline from."""
MAX_REGRESSION_OUTPUTS = 64
"""The most values per sample a regression bundle profiles (one window each)."""


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
    from edgeops.trainer.run import Run

    cfg = config.checked()
    r = run if isinstance(run, Run) else Run.load(run)
    model_path, fmt = _model_file(model)
    dest = _destination(Path(out), cfg.name or r.name, cfg)
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
    atol = _atol(quantized)
    samples = _samples({"inputs": x_test.astype(np.float32)}, outputs)

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
    return _write(manifest, model_path, samples, dest, key)


def package_model(
    model: str | Path,
    data: str | Path,
    out: str | Path,
    config: PackageConfig,
    *,
    task: Literal["classification", "regression"],
    labels: tuple[str, ...] = (),
    key: SigningKey | None,
    report: dict[str, Any] | None = None,
) -> Path:
    """Write the bundle of ``model`` (a .tflite or .onnx made anywhere, with one input or
    several) from ``data``: realistic inputs in a ``.npz`` with one array per input name (a
    one-input model also takes ``x``, a ``.npy`` or a ``.csv``; see
    :mod:`edgeops.core.datafiles`), samples along axis 0.

    The runtime gives the signature; the data gives the baseline (every input profiled by name:
    a value per sample as a numeric feature, a larger sample as a tensor through its mean and
    standard deviation over the whole sample; the first output as class counts and confidence for
    a classifier, as one numeric profile per value for a regressor) and the samples, with the
    outputs the model gave them. Models whose batch is fixed run one sample per call.
    ``labels`` name a classifier's classes (by default their indices)."""
    from device_agent.runtimes import open_runtime, run_feeds

    cfg = config.checked()
    if task not in ("classification", "regression"):
        raise UsageError(f"--task {task!r}: a bundle's task is classification or regression")
    model_path, fmt = _model_file(model)
    name = cfg.name or model_path.stem
    if not _NAME.match(name):
        raise UsageError(f"the model's name {name!r} does not fit a bundle: pass --name NAME")
    dest = _destination(Path(out), name, cfg)
    if report is None:
        report = conversion_report(model_path)
    ds = datafiles.load(data)
    with open_runtime(model_path) as rt:
        feeds = datafiles.model_feeds(ds, rt.inputs, "--data")
        n = len(feeds)
        if n < MIN_BASELINE_SAMPLES:
            raise InputDataError(
                f"--data {ds.source}: {n} samples; a baseline needs at least {MIN_BASELINE_SAMPLES}"
            )
        kept = feeds.take(slice(0, cfg.samples))
        outputs = run_feeds(rt, feeds)
        sample_outputs = run_feeds(rt, kept)
        inputs_info, outputs_info = rt.inputs, rt.outputs
    first = outputs[0].reshape(n, -1)
    names = _labels(task, labels, first, outputs_info[0])
    profile = Profile(
        _input_profiles(feeds),
        _output_profiles(task, names, first, outputs_info[0].name),
    )
    # The data's sample shapes are the ones served: the baseline's tensor statistics are of
    # those, and a dimension the model leaves free is fixed at the data's size.
    if len(inputs_info) == 1 and not feeds.whole[0]:
        pre = Preprocessing("tensor", inputs_info[0].name, shape=kept.arrays[0].shape[1:])
        arrays = {"inputs": kept.arrays[0].astype(np.float32)}
    else:
        shapes = tuple(
            NamedInput(input_name, tuple(int(d) for d in a.shape[1:]))
            for input_name, a in zip(feeds.names, feeds.arrays, strict=True)
        )
        pre = Preprocessing("tensors", inputs_info[0].name, tensors=shapes)
        arrays = {f"input_{k}": a for k, a in enumerate(kept.arrays)}
    samples = _samples(arrays, sample_outputs)
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
        "task": task,
        "labels": list(names),
        "signature": {
            "inputs": [t.to_dict() for t in inputs_info],
            "outputs": [t.to_dict() for t in outputs_info],
        },
        "preprocessing": pre.to_dict(),
        "baseline": profile.to_dict(),
        "evaluation": None,
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
            "count": len(kept),
            "atol": _atol([t for t in outputs_info if t.quantized]),
            "rtol": 1e-3,
        },
        "min_runtime": runtime_requirements(model_path),
        "training": {"run": None, "data_sha256": sha256_file(Path(data)), "target": None},
    }
    return _write(manifest, model_path, samples, dest, key)


def _model_file(model: str | Path) -> tuple[Path, str]:
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("tflite", "onnx"):
        raise ModelError(f"{path}: package a .tflite or .onnx model")
    return path, fmt


def _atol(quantized: list[TensorInfo]) -> float:
    return max([1e-4] + [1.01 * float(t.scale or 0.0) for t in quantized])


def _samples(inputs: dict[str, npt.NDArray[Any]], outputs: list[npt.NDArray[Any]]) -> bytes:
    """``samples.npz``: the inputs (``inputs`` for a one-input model, else ``input_K`` in the
    model's input order) and ``output_I``, the outputs the model gave them."""
    buf = io.BytesIO()
    arrays = {**inputs, **{f"output_{i}": o for i, o in enumerate(outputs)}}
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _destination(out: Path, name: str, cfg: PackageConfig) -> Path:
    """Where the bundle goes; an existing file is refused unless ``cfg.force`` (checked before
    any work)."""
    dest = bundle_path(out, name, cfg.version)
    if dest.exists() and not cfg.force:
        raise OutputError(f"{dest} exists: pass --force to replace it, or a new --version")
    return dest


def _write(
    manifest: dict[str, Any], model: Path, samples: bytes, dest: Path, key: SigningKey | None
) -> Path:
    files = {manifest["model"]["file"]: model.read_bytes(), SAMPLES_FILE: samples}
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{dest.parent}: cannot create directory ({e})") from None
    return write_bundle(dest, manifest, files, key=key)


def _labels(
    task: str, labels: tuple[str, ...], first: npt.NDArray[Any], output: TensorInfo
) -> tuple[str, ...]:
    """The class names of a classifier's first output (``[N, K]`` probabilities or scores, or
    ``[N, 1]``: the probability of class 1); none for a regressor."""
    width = first.shape[1]
    if task == "regression":
        if labels:
            raise UsageError("--labels names a classifier's classes; this is a regression")
        if width > MAX_REGRESSION_OUTPUTS:
            raise UsageError(
                f"output '{output.name}' has {width} values per sample; a regression bundle "
                f"profiles at most {MAX_REGRESSION_OUTPUTS}"
            )
        return ()
    classes = max(width, 2)
    if classes > MAX_BINS:
        raise UsageError(
            f"output '{output.name}' has {width} classes; a window counts at most {MAX_BINS}"
        )
    if width == 1 and not ((first >= 0) & (first <= 1)).all():
        raise UsageError(
            f"output '{output.name}' has one value per sample outside [0, 1]: a classifier's "
            "single output is the probability of class 1 (else use --task regression)"
        )
    if not labels:
        return tuple(str(i) for i in range(classes))
    if len(labels) != classes:
        raise UsageError(
            f"--labels names {len(labels)} classes; output '{output.name}' gives {classes}"
        )
    if len(set(labels)) != len(labels) or "" in labels:
        raise UsageError("--labels: class names must be unique and non-empty")
    return labels


def _input_profiles(feeds: Feeds) -> tuple[InputProfile, ...]:
    """Every input by name: one value per sample as a numeric feature; a larger sample as a
    tensor, its mean and standard deviation over the whole sample (over the fixed subset of
    ``TENSOR_SAMPLE`` elements when it has more), as the trainer's tensor inputs; the layout of
    a model made elsewhere is not known, so no reduction is per channel."""
    out: list[InputProfile] = []
    for name, a in zip(feeds.names, feeds.arrays, strict=True):
        x = np.asarray(a, dtype=np.float64)
        if x.ndim == 1:
            out.append(profile_numeric(name, x))
        else:
            out.append(profile_tensor(name, x, channels_last=False))
    return tuple(out)


def _output_profiles(
    task: str, labels: tuple[str, ...], first: npt.NDArray[Any], name: str
) -> tuple[OutputProfile, ...]:
    if task == "classification":
        return (profile_class_outputs(first, labels),)
    return profile_regression_outputs(name, first)


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
