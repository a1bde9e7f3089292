"""The demo's models: train on scikit-learn's digits, convert (int8 TFLite gated, two others to
compare), package and verify a signed bundle; later, retrain on recent (drifted) data for the
next version."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeops.core.errors import EdgeOpsError


class DemoFailed(EdgeOpsError):
    """A demo step did not do what it says."""


def step(text: str) -> float:
    print(f"\n== {text}", flush=True)
    return time.perf_counter()


@dataclass(frozen=True)
class Keys:
    private: Path
    public: Path
    """The bundle signing key pair."""
    command_private: Path
    command_public: Path
    """The service's command key pair: the service signs commands, devices trust its .pub."""


def make_keys(out: Path) -> Keys:
    """Throwaway keys, new each run: one pair signs the bundles, another the commands."""
    from edgeops.core.signing import generate_keypair

    private, public = generate_keypair(out / "keys", "demo", overwrite=True)
    command_private, command_public = generate_keypair(out / "keys", "command", overwrite=True)
    return Keys(private, public, command_private, command_public)


def train_run(data: Path, out: Path, epochs: int = 30) -> Any:
    """Train a run (the six pipeline steps); a blessed run or DemoFailed."""
    from edgeops.trainer.config import TrainConfig
    from edgeops.trainer.run import train

    run = train(
        data,
        out,
        TrainConfig(target="label", epochs=epochs),
        on_step=lambda r: print(f"   {r.name:<10} {'reused' if r.cached else 'ran'}"),
    )
    print(run.table())
    return run


def convert_and_package(
    run: Any, out: Path, keys: Keys, version: str, *, parent: str | None, compare: bool
) -> Path:
    """Convert to int8 TFLite (gated: at most 1 point of accuracy lost, 98 % agreement), with
    fp32 TFLite and int8 ONNX alongside when ``compare`` (a comparison that its gate rejects is
    shown as rejected; only the deployed model must pass); sign and verify the bundle."""
    from converters import ConversionConfig, Format, Gates, Mode, Status, convert
    from converters.report import comparison_table
    from edgeops.core.bundle import Bundle
    from edgeops.core.signing import load_signing_key, load_verify_key
    from edgeops.packaging.package import PackageConfig, package

    plan = [(Format.TFLITE, Mode.INT8)]
    if compare:
        plan += [(Format.TFLITE, Mode.FP32), (Format.ONNX, Mode.INT8)]
    reports = []
    for fmt, mode in plan:
        gated = mode is Mode.INT8
        t = time.perf_counter()
        report = convert(
            run.model,
            out / "models",
            ConversionConfig(
                to=fmt,
                mode=mode,
                calibration=run.split("train"),
                validation=run.split("test"),
                gates=Gates(max_accuracy_drop=1.0, min_agreement=0.98) if gated else Gates(),
                name="digits",
                latency_runs=20,
            ),
        )
        reports.append(report)
        print(
            f"   {report.artifact['file']}: {report.status.value}, {time.perf_counter() - t:.1f} s"
        )
        if report.status is Status.REJECTED:
            why = "; ".join(report.reasons)
            if not reports[1:]:  # the model that is deployed
                raise DemoFailed(f"{report.artifact['file']}: {why}")
            print(f"     (shown for comparison only, not deployed: {why})")
    if compare:
        print("\n   size ratio against the Keras file; latency: host CPU, 1 thread, batch 1")
        print(comparison_table(reports))
    model = out / "models" / reports[0].artifact["file"]
    path = package(
        run,
        model,
        out / "bundles",
        PackageConfig(version=version, name="digits", parent=parent),
        key=load_signing_key(keys.private),
    )
    with Bundle.open(path) as b:
        b.verify([load_verify_key(keys.public)])
    print(f"   signed and verified: {path}")
    return path


def recent_data(data: Path, out: Path, brightness: float) -> Path:
    """The training data plus a copy as the drifted devices now see it (brighter, saturating at
    16): what a retraining on recent data would get."""
    from edgeops.simulate.inject import Scale, shift

    with np.load(data) as z:
        images, labels = z["image"], z["label"]
    scale = Scale(float(images.std()), float(images.min()), float(images.max()))
    brighter = shift(images, brightness, scale, clip=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        image=np.concatenate([images, brighter]).astype(np.float32),
        label=np.concatenate([labels, labels]),
    )
    return out
