"""Conversion benchmark: what edgeops' conversions cost and keep, next to plain library defaults.

Run::

    python benchmarks/conversion.py [--quick | --smoke] [--out benchmarks/results]

What it measures
----------------
Two models, each converted every way with ``converters.convert`` ("edgeops" rows):

* ``digits``: the small CNN of ``edgeops.trainer.samples`` trained on scikit-learn's digits (8x8
  images, held-out test set of 450), to TFLite fp32, dynamic, float16, int8 (float I/O), int8 with
  int8 I/O and int16x8, and to ONNX fp32, float16, dynamic and int8.
* ``mobilenetv2``: Keras' MobileNetV2 at 224x224 with random weights, for a realistic size, to
  TFLite fp32, float16, dynamic, int8 and ONNX fp32, int8, calibrated on random images. Random
  weights make accuracy meaningless, so only size and latency are shown.

The "library default" rows are what a tutorial does, measured in the same run: TFLite's converter
with ``Optimize.DEFAULT`` and a representative dataset of the first 100 training samples (and the
same with the full-integer settings: ``TFLITE_BUILTINS_INT8``, int8 I/O), and onnxruntime's
``quantize_static`` with no options on edgeops' fp32 ONNX model.

How to read the table
---------------------
``size x fp32`` and ``p50 x fp32`` are ratios to the fp32 artifact of the same model and format.
The ratios matter, the milliseconds do not: latency is one thread, batch 1, on a shared machine;
each model is timed several times (3 with ``--quick``, else 7), alternating the order of the
models, and the median of its p50s is shown. Byte-identical artifacts are listed as notes: the gap
between their latencies shows the noise.
``acc %`` is accuracy on the digits test set, ``drop`` the Keras model's accuracy minus it in
percentage points, ``agree %`` the top-1 agreement with the Keras model. Every row is evaluated by
the same code (``device_agent.runtimes.run_float``, ``device_agent.benchmark.benchmark``).

``--smoke`` (what ``make test`` runs, see ``bench_smoke.py``): the digits CNN trained for one
epoch, only the conversions the goals read (TFLite fp32, int8, int8 I/O; ONNX fp32, int8; the
digits library defaults), and a few-layer image model at 32x32 in place of MobileNetV2.

The goals printed last say PASS or FAIL with the measured figure. The script exits 0 when a goal
fails (it reports) and non-zero only if something crashed. Rows, goals and notes go to
``<out>/conversion.json``; the converted models stay under ``<out>/<model>/`` (edgeops' with
their conversion reports under ``edgeops/``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import hashlib
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime.quantization as ortq
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic
from bench_smoke import SMOKE_IMAGE_MODEL, RunMode, add_mode_options, mode_of, stand_in_image_model

from converters import ConversionConfig, ConversionReport, Format, IOType, Mode, convert
from device_agent.benchmark import BenchConfig, benchmark
from device_agent.runtimes import open_runtime, run_float
from edgeops.core.optional import quiet_native_stderr, require
from edgeops.core.terminal import fmt, render
from edgeops.trainer import samples

# Imported as edgeops does, which hides TensorFlow's native start-up chatter.
tf = require("tensorflow", "convert")
keras = require("keras", "convert")

FloatArray = npt.NDArray[np.float32]

EDGEOPS = "edgeops"
DEFAULT = "library default"
TUTORIAL_SAMPLES = 100
"""Representative samples of the library-default baselines: the first 100, as tutorials do."""
INT8_IO = "int8 (int8 I/O)"


@dataclass(frozen=True)
class Settings:
    quick: bool
    smoke: bool
    out: Path
    digits_runs: int
    mobilenet_runs: int
    mobilenet_calibration: int
    repeats: int
    """Latency measurements per model, in alternating order; the median p50 is reported."""
    convert_latency_runs: int = 5
    """convert() times each artifact too; this script re-times them interleaved: keep it short."""
    digits_epochs: int = 12
    image_model: str = "mobilenetv2"
    """MobileNetV2, or the smoke runs' stand-in for it."""
    image_size: int = 224

    @classmethod
    def of(cls, mode: RunMode, out: Path) -> Settings:
        quick, smoke = mode == "quick", mode == "smoke"
        if smoke:
            return cls(
                quick,
                smoke,
                out,
                digits_runs=20,
                mobilenet_runs=5,
                mobilenet_calibration=8,
                repeats=1,
                convert_latency_runs=2,
                digits_epochs=1,
                image_model=SMOKE_IMAGE_MODEL,
                image_size=32,
            )
        if quick:
            return cls(
                quick,
                smoke,
                out,
                digits_runs=200,
                mobilenet_runs=15,
                mobilenet_calibration=32,
                repeats=3,
            )
        return cls(
            quick,
            smoke,
            out,
            digits_runs=1000,
            mobilenet_runs=50,
            mobilenet_calibration=100,
            repeats=7,
        )

    @property
    def digits_variants(self) -> tuple[Variant, ...]:
        return SMOKE_DIGITS_VARIANTS if self.smoke else DIGITS_VARIANTS

    @property
    def image_variants(self) -> tuple[Variant, ...]:
        return SMOKE_IMAGE_VARIANTS if self.smoke else MOBILENET_VARIANTS


@dataclass(frozen=True)
class Prepared:
    """A source model and its data files."""

    name: str
    keras_path: Path
    calibration: Path
    x_calibration: FloatArray
    validation: Path | None = None
    x_test: FloatArray | None = None
    y_test: npt.NDArray[np.int64] | None = None
    calibration_samples: int | None = None
    """None: the ConversionConfig default."""


@dataclass(frozen=True)
class Variant:
    """One edgeops conversion."""

    fmt: Format
    mode: Mode
    io: IOType | None = None

    @property
    def label(self) -> str:
        return INT8_IO if self.io is IOType.INT8 else self.mode.value


DIGITS_VARIANTS = (
    Variant(Format.TFLITE, Mode.FP32),
    Variant(Format.TFLITE, Mode.DYNAMIC),
    Variant(Format.TFLITE, Mode.FLOAT16),
    Variant(Format.TFLITE, Mode.INT8),
    Variant(Format.TFLITE, Mode.INT8, IOType.INT8),
    Variant(Format.TFLITE, Mode.INT16X8),
    Variant(Format.ONNX, Mode.FP32),
    Variant(Format.ONNX, Mode.FLOAT16),
    Variant(Format.ONNX, Mode.DYNAMIC),
    Variant(Format.ONNX, Mode.INT8),
)
MOBILENET_VARIANTS = (
    Variant(Format.TFLITE, Mode.FP32),
    Variant(Format.TFLITE, Mode.FLOAT16),
    Variant(Format.TFLITE, Mode.DYNAMIC),
    Variant(Format.TFLITE, Mode.INT8),
    Variant(Format.ONNX, Mode.FP32),
    Variant(Format.ONNX, Mode.INT8),
)
SMOKE_DIGITS_VARIANTS = (
    Variant(Format.TFLITE, Mode.FP32),
    Variant(Format.TFLITE, Mode.INT8),
    Variant(Format.TFLITE, Mode.INT8, IOType.INT8),
    Variant(Format.ONNX, Mode.FP32),
    Variant(Format.ONNX, Mode.INT8),
)
"""The conversions the goals read."""
SMOKE_IMAGE_VARIANTS = (
    Variant(Format.TFLITE, Mode.FP32),
    Variant(Format.TFLITE, Mode.INT8),
    Variant(Format.ONNX, Mode.FP32),
    Variant(Format.ONNX, Mode.INT8),
)


@dataclass(frozen=True)
class Artifact:
    """A converted model file and who made it."""

    model: str
    fmt: str
    mode: str
    who: str
    path: Path
    report: ConversionReport | None = None
    """The ConversionReport of edgeops artifacts."""


@dataclass(frozen=True)
class Quality:
    accuracy: float
    agreement: float


@dataclass(frozen=True)
class Reference:
    """The Keras model's outputs on the test set."""

    probs: FloatArray
    accuracy: float


@dataclass(frozen=True)
class Row:
    model: str
    format: str
    mode: str
    who: str
    file: str
    size_bytes: int
    size_ratio: float
    accuracy: float | None
    accuracy_drop_points: float | None
    agreement: float | None
    p50_ms: float
    p50_ms_repeats: tuple[float, ...]
    latency_ratio: float


# --- models and data ----------------------------------------------------------------------------


def prepare_digits(work: Path, epochs: int) -> Prepared:
    split = samples.digits()
    model = samples.train_digits_cnn(split, work / "digits.keras", epochs=epochs)
    calibration, validation = split.save(work, "digits")
    return Prepared(
        name="digits",
        keras_path=model,
        calibration=calibration,
        x_calibration=split.x_train,
        validation=validation,
        x_test=split.x_test,
        y_test=split.y_test,
    )


def prepare_mobilenet(work: Path, s: Settings) -> Prepared:
    """MobileNetV2 (random weights), or in a smoke run its stand-in."""
    work.mkdir(parents=True, exist_ok=True)
    size, n_calibration, name = s.image_size, s.mobilenet_calibration, s.image_model
    if s.smoke:
        model = stand_in_image_model(keras, size, 10)
    else:
        model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
    path = work / f"{name}.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(0.0, 1.0, size=(n_calibration, size, size, 3)).astype(np.float32)
    calibration = work / f"{name}-calibration.npz"
    np.savez(calibration, x=x)
    return Prepared(
        name=name,
        keras_path=path,
        calibration=calibration,
        x_calibration=x,
        calibration_samples=n_calibration,
    )


def keras_reference(model: Prepared) -> Reference:
    assert model.x_test is not None and model.y_test is not None
    net = keras.models.load_model(model.keras_path)
    probs = np.asarray(net.predict(model.x_test, batch_size=256, verbose=0), dtype=np.float32)
    return Reference(probs, float(np.mean(probs.argmax(-1) == model.y_test)))


# --- conversions --------------------------------------------------------------------------------


def convert_edgeops(
    model: Prepared, variants: Sequence[Variant], out: Path, latency_runs: int
) -> list[Artifact]:
    artifacts = []
    for v in variants:
        say(f"{model.name}: edgeops {v.fmt} {v.label}")
        cfg = ConversionConfig(
            to=v.fmt,
            mode=v.mode,
            io=v.io,
            calibration=model.calibration,
            validation=model.validation,
            latency_runs=latency_runs,
            name=model.name,
        )
        if model.calibration_samples is not None:
            cfg = replace(cfg, calibration_samples=model.calibration_samples)
        report = convert(model.keras_path, out, cfg)
        path = out / report.artifact["file"]
        artifacts.append(Artifact(model.name, v.fmt.value, v.label, EDGEOPS, path, report))
    return artifacts


def first_samples(x: FloatArray) -> list[FloatArray]:
    """The tutorials' calibration data: the first samples, each as a batch of one."""
    return [x[i : i + 1] for i in range(min(TUTORIAL_SAMPLES, len(x)))]


def representative(x: FloatArray) -> Iterator[list[FloatArray]]:
    """TFLite's representative dataset protocol: one list of input arrays at a time."""
    for sample in first_samples(x):
        yield [sample]


def tflite_default(saved_model: Path, x: FloatArray, full_integer: bool) -> bytes:
    """TFLite's converter as a tutorial sets it up; nothing else."""
    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: representative(x)
    if full_integer:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
    with quiet_native_stderr():
        return bytes(conv.convert())


class FirstSamples(ortq.CalibrationDataReader):  # type: ignore[misc]
    """onnxruntime's calibration reader protocol over the first samples, one at a time."""

    def __init__(self, input_name: str, x: FloatArray) -> None:
        self._feeds = iter([{input_name: sample} for sample in first_samples(x)])

    def get_next(self) -> dict[str, FloatArray] | None:
        return next(self._feeds, None)


def ort_default(fp32: Path, dst: Path, x: FloatArray) -> None:
    """onnxruntime's ``quantize_static`` with no options."""
    input_name = onnx.load(str(fp32)).graph.input[0].name
    ortq.quantize_static(str(fp32), str(dst), FirstSamples(input_name, x))


def convert_defaults(model: Prepared, fp32_onnx: Path, out: Path) -> list[Artifact]:
    """The library-default baselines: TFLite int8 with float and int8 I/O, onnxruntime int8."""
    out.mkdir(parents=True, exist_ok=True)
    saved_model = out / "saved_model"
    keras.models.load_model(model.keras_path).export(str(saved_model), verbose=False)
    x = model.x_calibration
    artifacts = []
    for full_integer, mode in ((False, Mode.INT8.value), (True, INT8_IO)):
        say(f"{model.name}: library default tflite {mode}")
        path = out / f"{model.name}.{'int8io' if full_integer else 'int8'}.tflite"
        path.write_bytes(tflite_default(saved_model, x, full_integer))
        artifacts.append(Artifact(model.name, Format.TFLITE.value, mode, DEFAULT, path))
    say(f"{model.name}: library default onnx int8")
    path = out / f"{model.name}.int8.onnx"
    ort_default(fp32_onnx, path, x)
    artifacts.append(Artifact(model.name, Format.ONNX.value, Mode.INT8.value, DEFAULT, path))
    return artifacts


def convert_all(model: Prepared, variants: Sequence[Variant], s: Settings) -> list[Artifact]:
    root = s.out / model.name
    ours = convert_edgeops(model, variants, root / "edgeops", s.convert_latency_runs)
    fp32_onnx = find_artifact(ours, Format.ONNX.value, Mode.FP32.value).path
    return ours + convert_defaults(model, fp32_onnx, root / "library-default")


def find_artifact(artifacts: Sequence[Artifact], fmt_: str, mode: str) -> Artifact:
    return next(a for a in artifacts if a.fmt == fmt_ and a.mode == mode and a.who == EDGEOPS)


# --- measurements -------------------------------------------------------------------------------


def quality(path: Path, x: FloatArray, labels: npt.NDArray[np.int64], ref: Reference) -> Quality:
    """Accuracy and top-1 agreement with the Keras model, through ``run_float``."""
    with open_runtime(path) as rt:
        probs = np.concatenate([run_float(rt, x[i : i + 256])[0] for i in range(0, len(x), 256)])
    predicted = probs.reshape(ref.probs.shape).argmax(-1)
    return Quality(
        accuracy=float(np.mean(predicted == labels)),
        agreement=float(np.mean(predicted == ref.probs.argmax(-1))),
    )


def p50s(paths: Sequence[Path], runs: int, repeats: int) -> dict[Path, list[float]]:
    """Single-thread p50 latency of every model, ``repeats`` times, alternating the order."""
    found: dict[Path, list[float]] = {p: [] for p in paths}
    for rep in range(repeats):
        order = paths if rep % 2 == 0 else list(reversed(paths))
        say(f"timing {len(paths)} models, round {rep + 1} of {repeats}")
        for p in order:
            found[p].append(benchmark(p, BenchConfig(threads=1, runs=runs)).steady.p50_ms)
    return found


def make_rows(
    artifacts: Sequence[Artifact],
    latencies: dict[Path, list[float]],
    qualities: dict[Path, Quality],
    ref: Reference | None,
) -> list[Row]:
    rows = []
    for a in artifacts:
        fp32 = find_artifact(artifacts, a.fmt, Mode.FP32.value).path
        size, p50 = a.path.stat().st_size, statistics.median(latencies[a.path])
        q = qualities.get(a.path)
        rows.append(
            Row(
                model=a.model,
                format=a.fmt,
                mode=a.mode,
                who=a.who,
                file=str(a.path),
                size_bytes=size,
                size_ratio=size / fp32.stat().st_size,
                accuracy=None if q is None else q.accuracy,
                accuracy_drop_points=(
                    None if q is None or ref is None else (ref.accuracy - q.accuracy) * 100
                ),
                agreement=None if q is None else q.agreement,
                p50_ms=p50,
                p50_ms_repeats=tuple(latencies[a.path]),
                latency_ratio=p50 / statistics.median(latencies[fp32]),
            )
        )
    return rows


def cross_check(artifacts: Sequence[Artifact], rows: Sequence[Row], ref: Reference) -> list[str]:
    """Where a ConversionReport disagrees with this script's measurement of the same file."""
    notes = []
    by_file = {r.file: r for r in rows}
    for a in artifacts:
        if a.report is None:
            continue
        row, report = by_file[str(a.path)], a.report
        if report.artifact["bytes"] != row.size_bytes:
            notes.append(f"{a.path.name}: report says {report.artifact['bytes']} bytes")
        f = report.fidelity
        if f is None:
            continue
        for what, theirs, ours in (
            ("source accuracy", f.source_accuracy, ref.accuracy),
            ("accuracy", f.converted_accuracy, row.accuracy),
            ("agreement", f.agreement, row.agreement),
        ):
            if theirs is None or ours is None or abs(theirs - ours) > 1e-9:
                notes.append(f"{a.path.name}: report {what} {theirs} != measured {ours}")
    return notes


def identical(artifacts: Sequence[Artifact]) -> list[str]:
    """Byte-identical artifacts: their latency difference is the measurement noise."""
    first: dict[bytes, Artifact] = {}
    notes = []
    for a in artifacts:
        digest = hashlib.sha256(a.path.read_bytes()).digest()
        if digest in first:
            notes.append(f"{a.path} is byte-identical to {first[digest].path}")
        else:
            first[digest] = a
    return notes


# --- goals --------------------------------------------------------------------------------------


def find_row(rows: Sequence[Row], model: str, fmt_: str, mode: str, who: str = EDGEOPS) -> Row:
    return next(r for r in rows if (r.model, r.format, r.mode, r.who) == (model, fmt_, mode, who))


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.2f}"


def goals(rows: Sequence[Row], image_model: str) -> list[Goal]:
    tfl, ort = Format.TFLITE.value, Format.ONNX.value
    int8 = Mode.INT8.value
    found = []
    for model, mode in (("digits", int8), ("digits", INT8_IO), (image_model, int8)):
        r = find_row(rows, model, tfl, mode)
        found.append(
            Goal(
                f"{model}: TFLite {mode} size <= 0.29 x fp32",
                f"{r.size_ratio:.3f}",
                r.size_ratio <= 0.29,
            )
        )
    for mode in (int8, INT8_IO):
        r = find_row(rows, "digits", tfl, mode)
        drop, agree = r.accuracy_drop_points, r.agreement
        assert drop is not None and agree is not None
        found.append(
            Goal(
                f"digits: TFLite {mode} drop <= 0.5 points, agreement >= 99 %",
                f"drop {drop:.2f} points, agreement {pct(agree)} %",
                drop <= 0.5 and agree >= 0.99,
            )
        )
    for model in ("digits", image_model):
        r = find_row(rows, model, ort, int8)
        found.append(
            Goal(
                f"{model}: ONNX int8 p50 <= fp32 p50",
                f"ratio {r.latency_ratio:.2f}",
                r.latency_ratio <= 1.0,
            )
        )
    for fmt_, mode in ((tfl, int8), (tfl, INT8_IO), (ort, int8)):
        ours, theirs = (find_row(rows, "digits", fmt_, mode, who) for who in (EDGEOPS, DEFAULT))
        assert ours.accuracy is not None and theirs.accuracy is not None
        found.append(
            Goal(
                f"digits: {fmt_} {mode} accuracy >= library default",
                f"{pct(ours.accuracy)} % vs {pct(theirs.accuracy)} %",
                ours.accuracy >= theirs.accuracy,
            )
        )
    return found


# --- output -------------------------------------------------------------------------------------


def table(rows: Sequence[Row], ref: Reference, repeats: int) -> str:
    headers = (
        "model",
        "format",
        "mode",
        "who",
        "bytes",
        "size x fp32",
        "acc %",
        "drop",
        "agree %",
        "p50 ms",
        "p50 x fp32",
    )
    cells = [
        (
            r.model,
            r.format,
            r.mode,
            r.who,
            f"{r.size_bytes:,}",
            f"{r.size_ratio:.3f}",
            pct(r.accuracy),
            fmt(r.accuracy_drop_points, 2),
            pct(r.agreement),
            fmt(r.p50_ms),
            f"{r.latency_ratio:.2f}",
        )
        for r in rows
    ]
    title = (
        f"Conversions (digits Keras accuracy {pct(ref.accuracy)} % on {len(ref.probs)} test "
        f"images; p50: 1 thread, batch 1, median of {repeats} interleaved measurements)"
    )
    return render(headers, cells, title=title)


def versions() -> dict[str, str]:
    return package_versions(
        (
            *("edgeops", "tensorflow", "tensorflow-cpu", "keras"),
            *("tf2onnx", "onnx", "onnxruntime", "ai-edge-litert"),
        ),
        python=False,
    )


def write_json(
    path: Path, s: Settings, rows: Sequence[Row], found: Sequence[Goal], **extra: Any
) -> None:
    doc = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {**asdict(s), "out": str(s.out)},
        **extra,
        "rows": [asdict(r) for r in rows],
        "goals": [asdict(g) for g in found],
        "all_goals_pass": all(g.passed for g in found),
        "versions": versions(),
        "seconds": elapsed(),
    }
    write_json_atomic(path, doc)


# --- main ---------------------------------------------------------------------------------------


def run(s: Settings) -> None:
    say("digits: training the CNN")
    digits = prepare_digits(s.out / "digits" / "source", s.digits_epochs)
    ref = keras_reference(digits)
    digits_artifacts = convert_all(digits, s.digits_variants, s)
    assert digits.x_test is not None and digits.y_test is not None
    qualities = {
        a.path: quality(a.path, digits.x_test, digits.y_test, ref) for a in digits_artifacts
    }

    say(f"{s.image_model}: building (random weights)")
    mobilenet = prepare_mobilenet(s.out / s.image_model / "source", s)
    mobilenet_artifacts = convert_all(mobilenet, s.image_variants, s)

    digits_p50 = p50s([a.path for a in digits_artifacts], s.digits_runs, s.repeats)
    mobilenet_p50 = p50s([a.path for a in mobilenet_artifacts], s.mobilenet_runs, s.repeats)
    rows = make_rows(digits_artifacts, digits_p50, qualities, ref) + make_rows(
        mobilenet_artifacts, mobilenet_p50, {}, None
    )
    artifacts = digits_artifacts + mobilenet_artifacts
    notes = cross_check(artifacts, rows, ref) + identical(artifacts)
    found = goals(rows, s.image_model)

    print(table(rows, ref, s.repeats))
    print()
    print(goal_lines(found))
    for note in notes:
        print(f"note: {note}")
    out = s.out / "conversion.json"
    write_json(out, s, rows, found, keras_accuracy={"digits": ref.accuracy}, notes=notes)
    say(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_mode_options(ap, "fewer latency runs, less calibration")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    run(Settings.of(mode_of(args), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
