"""``make demo``: train a small CNN on scikit-learn's digits, convert it every way, compare.

Runs on embedded defaults with nothing to download. Exits 0 only if every step did what it says:
every conversion succeeded and the int8 models passed their fidelity gates.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from edgeops.errors import EdgeOpsError

OUT = Path("demo-output")


def _step(text: str) -> float:
    print(f"\n== {text}", flush=True)
    return time.perf_counter()


def main(out: Path = OUT) -> int:
    from converters import ConversionConfig, Format, Gates, Mode, Status, convert
    from converters.report import comparison_table
    from edgeops import samples

    t = _step("train: a small CNN on scikit-learn's bundled digits (8x8 images, 10 classes)")
    split = samples.digits()
    model = samples.train_digits_cnn(split, out / "digits.keras")
    cal, val = split.save(out, "digits")
    print(
        f"   {model} in {time.perf_counter() - t:.1f} s; "
        f"{len(split.x_train)} training and {len(split.x_test)} validation images"
    )

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
    if failures:
        print("\ndemo FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("\ndemo OK: every conversion succeeded and the int8 models passed their gates")
    return 0


if __name__ == "__main__":
    sys.exit(main())
