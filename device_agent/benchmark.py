"""The benchmark runner: what LiteRT's ``benchmark_model`` and ``onnxruntime_perf_test`` report.

It runs where a device can run it (no tensorflow when a lighter runtime is installed). Each model is
measured in a fresh process (``python -m device_agent.benchmark``) so that init time and peak memory
belong to that model alone; :func:`benchmark` measures in the current process.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.core import datafiles
from edgeops.core.datafiles import model_feeds
from edgeops.core.errors import (
    InputDataError,
    ModelError,
    OutputError,
    RuntimeBackendError,
    UsageError,
    cause,
    error_class,
)
from edgeops.core.feeds import parse_shape, random_feeds
from edgeops.core.files import atomic_write
from edgeops.core.tensors import TensorInfo, quantize
from edgeops.core.terminal import render

from .runtimes import open_runtime


@dataclass(frozen=True)
class BenchConfig:
    """How to benchmark a model."""

    threads: int | None = None
    """Interpreter threads; None lets the runtime choose."""
    runs: int = 100
    """Timed steady-state inferences."""
    warmup: int = 10
    """Untimed inferences after the first one, before the timed runs."""
    batch: int = 1
    seed: int = 0
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()
    """A call's input shapes by input name, for inputs with flexible dimensions."""
    data: Path | None = None
    """An input data file (.npz with one array per input name, .npy, .csv): its first samples
    are what is timed, at their real shapes."""


@dataclass(frozen=True)
class LatencySummary:
    """Summary of per-inference latencies, in milliseconds."""

    count: int
    mean_ms: float
    std_ms: float
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> LatencySummary:
        ms = np.asarray(seconds, dtype=np.float64) * 1e3
        if ms.size == 0:
            raise ValueError("no latencies to summarise")
        p50, p90, p99 = np.percentile(ms, [50, 90, 99])
        return cls(
            count=int(ms.size),
            mean_ms=float(ms.mean()),
            std_ms=float(ms.std()),
            min_ms=float(ms.min()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            max_ms=float(ms.max()),
        )


@dataclass(frozen=True)
class BenchResult:
    model: str
    backend: str
    threads: int | None
    batch: int
    init_ms: float
    first_inference_ms: float
    warmup_mean_ms: float
    steady: LatencySummary
    throughput_per_s: float
    """Samples per second in the steady state."""
    rss_before_load_mb: float
    peak_rss_mb: float
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    """The shape of each input in the timed call."""

    @property
    def model_memory_mb(self) -> float:
        """Peak resident memory above what the process held before the model was loaded."""
        return max(0.0, self.peak_rss_mb - self.rss_before_load_mb)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_memory_mb"] = self.model_memory_mb
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BenchResult:
        d = {k: v for k, v in d.items() if k != "model_memory_mb"}
        d["steady"] = LatencySummary(**d["steady"])
        return cls(**d)


def random_inputs(
    infos: Sequence[TensorInfo], batch: int = 1, seed: int = 0
) -> list[npt.NDArray[Any]]:
    """Random inputs of the right shape and dtype; flexible dimensions other than the batch must
    be given (:func:`call_inputs` with shapes or a data file)."""
    return random_feeds(infos, seed=seed, batch=batch).one_call(0)


def call_inputs(infos: Sequence[TensorInfo], cfg: BenchConfig) -> list[npt.NDArray[Any]]:
    """The arrays of the timed call: from the data file, else random at the given shapes."""
    if cfg.data is None:
        return random_feeds(infos, dict(cfg.shapes), cfg.seed, cfg.batch).one_call(0)
    if cfg.shapes:
        raise UsageError("give input shapes (--shape) or an input data file, not both")
    found = model_feeds(datafiles.load(cfg.data), tuple(infos), "benchmark input")
    if cfg.batch > 1 and found.batchable and not found.fixed_batch:
        if len(found) < cfg.batch:
            raise InputDataError(
                f"benchmark input {cfg.data}: {len(found)} samples, fewer than --batch {cfg.batch}"
            )
        return [np.ascontiguousarray(a[: cfg.batch]) for a in found.arrays]
    if cfg.batch > 1:
        raise UsageError(f"--batch {cfg.batch}: this model runs one sample per call")
    return found.one_call(0)


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def benchmark(
    model: str | Path,
    config: BenchConfig | None = None,
    arrays: Sequence[npt.NDArray[Any]] | None = None,
) -> BenchResult:
    """Load ``model`` and time it in this process, on ``arrays`` (one call's inputs) if given."""
    cfg = config or BenchConfig()
    before = _rss_mb()
    t0 = time.perf_counter()
    rt = open_runtime(model, threads=cfg.threads)
    init = time.perf_counter() - t0
    try:
        given = call_inputs(rt.inputs, cfg) if arrays is None else arrays
        # Float data for a quantized input is quantized as a caller would.
        inputs = [
            quantize(a, i) if i.quantized and np.asarray(a).dtype.kind == "f" else a
            for a, i in zip(given, rt.inputs, strict=True)
        ]
        shapes = {
            i.name: [int(d) for d in np.shape(a)] for i, a in zip(rt.inputs, inputs, strict=True)
        }
        t0 = time.perf_counter()
        try:
            rt.run(inputs)
        except Exception as e:  # the runtime's own exception types
            listed = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
            raise RuntimeBackendError(
                f"{Path(model).name} does not run on inputs {listed}: {cause(e)}"
            ) from None
        first = time.perf_counter() - t0
        warm: list[float] = []
        for _ in range(cfg.warmup):
            t0 = time.perf_counter()
            rt.run(inputs)
            warm.append(time.perf_counter() - t0)
        steady: list[float] = []
        for _ in range(max(1, cfg.runs)):
            t0 = time.perf_counter()
            rt.run(inputs)
            steady.append(time.perf_counter() - t0)
    finally:
        backend = rt.backend
        rt.close()
    total = math.fsum(steady)
    return BenchResult(
        model=str(model),
        backend=backend,
        threads=cfg.threads,
        batch=cfg.batch,
        init_ms=init * 1e3,
        first_inference_ms=first * 1e3,
        warmup_mean_ms=float(np.mean(warm) * 1e3) if warm else float("nan"),
        steady=LatencySummary.of(steady),
        throughput_per_s=len(steady) * cfg.batch / total if total > 0 else float("inf"),
        rss_before_load_mb=before,
        peak_rss_mb=_peak_rss_mb(),
        input_shapes=shapes,
    )


def bench_isolated(model: str | Path, config: BenchConfig) -> BenchResult:
    """Benchmark ``model`` in a fresh Python process, so init time and memory are its own."""
    p = Path(model)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file")
    cmd = [
        sys.executable,
        "-m",
        "device_agent.benchmark",
        str(p),
        "--runs",
        str(config.runs),
        "--warmup",
        str(config.warmup),
        "--batch",
        str(config.batch),
    ]
    if config.threads:
        cmd += ["--threads", str(config.threads)]
    for name, shape in config.shapes:
        cmd += ["--shape", f"{name}={'x'.join(str(d) for d in shape)}"]
    if config.data is not None:
        cmd += ["--input", str(config.data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeBackendError(
            f"{p}: benchmark process failed (exit {proc.returncode}): {_stderr_cause(proc.stderr)}"
        )
    data = json.loads(lines[-1])
    if "error" in data:
        raise error_class(int(data.get("exit_code", ModelError.exit_code)))(data["error"])
    return BenchResult.from_dict(data)


def _stderr_cause(stderr: str) -> str:
    """The error a crashed process printed: its exception line(s), not only the last line."""
    lines = [ln.rstrip() for ln in stderr.strip().splitlines() if ln.strip()]
    if not lines:
        return "no output"
    start = max(
        (k for k, ln in enumerate(lines) if ln.startswith("Traceback")), default=len(lines) - 1
    )
    tail = [ln.strip() for ln in lines[start:] if not ln.startswith(("  ", "Traceback"))]
    text = " | ".join(tail or lines[-3:])
    return text if len(text) <= 600 else text[:599] + "…"


def bench_models(models: Sequence[str | Path], config: BenchConfig) -> list[BenchResult]:
    return [bench_isolated(m, config) for m in models]


def table(results: Sequence[BenchResult]) -> str:
    """One comparison table, a row per model."""
    headers = (
        "model",
        "backend",
        "input",
        "init ms",
        "first ms",
        "warmup ms",
        "mean ms",
        "std ms",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "samples/s",
        "peak RSS MB",
    )
    rows = [
        (
            Path(r.model).name,
            r.backend,
            " ".join("x".join(str(d) for d in v) or "scalar" for v in r.input_shapes.values()),
            r.init_ms,
            r.first_inference_ms,
            r.warmup_mean_ms,
            r.steady.mean_ms,
            r.steady.std_ms,
            r.steady.p50_ms,
            r.steady.p90_ms,
            r.steady.p99_ms,
            r.throughput_per_s,
            r.peak_rss_mb,
        )
        for r in results
    ]
    return render(headers, rows)


def write_json(results: Sequence[BenchResult], path: str | Path) -> None:
    """Write results atomically (a temporary file renamed into place)."""
    p = Path(path)
    try:
        atomic_write(p, (json.dumps([r.to_dict() for r in results], indent=2) + "\n").encode())
    except OSError as e:
        raise OutputError(f"{p}: cannot write ({e.strerror})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark one model and print its result as one JSON line (used by ``edgeops bench``)."""
    ap = argparse.ArgumentParser(prog="python -m device_agent.benchmark")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--input", default=None)
    args = ap.parse_args(argv)
    from edgeops.core.errors import EdgeOpsError

    try:
        cfg = BenchConfig(
            threads=args.threads,
            runs=args.runs,
            warmup=args.warmup,
            batch=args.batch,
            shapes=tuple(parse_shape(t) for t in args.shape),
            data=None if args.input is None else Path(args.input),
        )
        result = benchmark(args.model, cfg)
    except EdgeOpsError as e:
        print(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return e.exit_code
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
