"""``make demo``: train on scikit-learn's digits, convert every way, compare, sign a bundle.

Runs on embedded defaults with nothing to download. Exits 0 only if every step did what it says:
the run was blessed, every conversion succeeded, the int8 models passed their fidelity gates, and
the signed bundle verified.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from edgeops.errors import EdgeOpsError

OUT = Path("demo-output")


def _step(text: str) -> float:
    print(f"\n== {text}", flush=True)
    return time.perf_counter()


def main(out: Path = OUT) -> int:
    from converters import ConversionConfig, Format, Gates, Mode, Status, convert
    from converters.report import comparison_table
    from edgeops import samples
    from edgeops.trainer import TrainConfig, train

    t = _step("train: the pipeline on scikit-learn's bundled digits (8x8 images, 10 classes)")
    data = samples.digits_npz(out / "digits.npz")
    try:
        run = train(
            data,
            out / "run",
            TrainConfig(target="label", epochs=30),
            on_step=lambda r: print(f"   {r.name:<10} {'reused' if r.cached else 'ran'}"),
        )
    except EdgeOpsError as e:
        print(f"\ndemo FAILED: {e}")
        return 1
    print(run.table())
    print(f"   {time.perf_counter() - t:.1f} s; lineage in {run.directory / 'lineage.json'}")
    model, cal, val = run.model, run.split("train"), run.split("test")

    plan = [
        (Format.TFLITE, Mode.FP32),
        (Format.TFLITE, Mode.FLOAT16),
        (Format.TFLITE, Mode.DYNAMIC),
        (Format.TFLITE, Mode.INT8),
        (Format.TFLITE, Mode.INT16X8),
        (Format.ONNX, Mode.FP32),
        (Format.ONNX, Mode.FLOAT16),
        (Format.ONNX, Mode.DYNAMIC),
        (Format.ONNX, Mode.INT8),
    ]
    reports = []
    failures = []
    for fmt, mode in plan:
        gated = mode is Mode.INT8
        cfg = ConversionConfig(
            to=fmt,
            mode=mode,
            calibration=cal,
            validation=val,
            gates=Gates(max_accuracy_drop=1.0, min_agreement=0.98) if gated else Gates(),
            name="digits",
        )
        t = _step(
            f"convert: {fmt} {mode}"
            + (" (gated: drop <= 1 point, agreement >= 98 %)" if gated else "")
        )
        try:
            report = convert(model, out / "models", cfg)
        except EdgeOpsError as e:
            print(f"   FAILED: {e}")
            failures.append(f"{fmt} {mode}: {e}")
            continue
        reports.append(report)
        print(
            f"   {report.artifact['file']}: {report.status.value}, {time.perf_counter() - t:.1f} s"
        )
        if report.status is Status.REJECTED:
            failures.append(f"{report.artifact['file']}: {'; '.join(report.reasons)}")

    print(
        "\n== comparison (size ratio against the Keras file; latency: host CPU, 1 thread, batch 1)"
    )
    print(comparison_table(reports))
    print(f"\nmodels and reports in {out / 'models'}")
    failures += _bundle(run, out)
    if failures:
        print("\ndemo FAILED:\n  " + "\n  ".join(failures))
        return 1
    print(
        "\ndemo OK: every conversion succeeded, the int8 models passed their gates, "
        "the bundle verified"
    )
    return 0


def _bundle(run: Any, out: Path) -> list[str]:
    """Sign the int8 TFLite model into a bundle and verify it as a device would."""
    from edgeops.bundle import Bundle
    from edgeops.packaging import PackageConfig, package
    from edgeops.signing import generate_keypair, load_signing_key, load_verify_key

    _step("package: the int8 TFLite model into a signed bundle, then verify it")
    try:
        private, public = generate_keypair(out / "keys", "demo", overwrite=True)
        model = out / "models" / "digits.int8.tflite"
        path = package(
            run, model, out, PackageConfig(version="1.0.0"), key=load_signing_key(private)
        )
        with Bundle.open(path) as b:
            result = b.verify([load_verify_key(public)])
    except EdgeOpsError as e:
        return [f"bundle: {e}"]
    print(f"   {path}\n")
    print(result.summary())
    return []


if __name__ == "__main__":
    sys.exit(main())
