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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edgeops.errors import ModelError, OutputError, RuntimeBackendError
from edgeops.tables import render
from edgeops.tensors import TensorInfo

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
    """Random inputs of the right shape and dtype (dynamic dimensions other than batch become 1)."""
    rng = np.random.default_rng(seed)
    arrays: list[npt.NDArray[Any]] = []
    for info in infos:
        shape = [batch, *(s if s > 0 else 1 for s in info.sample_shape)]
        dt = np.dtype(info.dtype)
        if dt.kind == "f":
            arrays.append(rng.random(shape, dtype=np.float32).astype(dt))
        elif dt.kind in "iu":
            lim = np.iinfo(dt)
            arrays.append(rng.integers(lim.min, lim.max, size=shape, endpoint=True).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 1, size=shape, endpoint=True).astype(bool))
        else:
            raise ValueError(f"cannot make inputs of dtype {dt} for '{info.name}'")
    return arrays


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


def benchmark(model: str | Path, config: BenchConfig | None = None) -> BenchResult:
    """Load ``model`` and time it in this process."""
    cfg = config or BenchConfig()
    before = _rss_mb()
    t0 = time.perf_counter()
    rt = open_runtime(model, threads=cfg.threads)
    init = time.perf_counter() - t0
    try:
        inputs = random_inputs(rt.inputs, cfg.batch, cfg.seed)
        t0 = time.perf_counter()
        rt.run(inputs)
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
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeBackendError(f"{p}: benchmark process failed ({tail[0][:200]})")
    data = json.loads(lines[-1])
    if "error" in data:
        raise ModelError(data["error"])
    return BenchResult.from_dict(data)


def bench_models(models: Sequence[str | Path], config: BenchConfig) -> list[BenchResult]:
    return [bench_isolated(m, config) for m in models]


def table(results: Sequence[BenchResult]) -> str:
    """One comparison table, a row per model."""
    headers = (
        "model",
        "backend",
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
    tmp = p.with_name(p.name + ".tmp")
    try:
        tmp.write_text(json.dumps([r.to_dict() for r in results], indent=2) + "\n")
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{p}: cannot write ({e.strerror})") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Benchmark one model and print its result as one JSON line (used by ``edgeops bench``)."""
    ap = argparse.ArgumentParser(prog="python -m device_agent.benchmark")
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args(argv)
    from edgeops.errors import EdgeOpsError

    cfg = BenchConfig(threads=args.threads, runs=args.runs, warmup=args.warmup, batch=args.batch)
    try:
        result = benchmark(args.model, cfg)
    except EdgeOpsError as e:
        print(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        return e.exit_code
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
