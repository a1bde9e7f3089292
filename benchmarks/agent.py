"""Agent benchmark: what serving through the device agent costs next to a bare interpreter.

Run::

    python benchmarks/agent.py [--quick | --smoke] [--profile] [--out benchmarks/results]

What it measures
----------------
Models, each served from an unsigned bundle by an :class:`~device_agent.agent.Agent`:

* ``digits``: the small CNN of the training pipeline (``edgeops.trainer.train`` on scikit-learn's
  digits, 5 epochs), converted by ``converters.convert`` to TFLite int8 with float inputs and
  outputs and to TFLite fp32, and packaged by ``edgeops.packaging.package.package``.
* ``mobilenetv2``: Keras' MobileNetV2 at 224x224x3, 1000 classes, random weights (no download),
  converted to TFLite fp32 and int8 (float I/O, calibrated on random images). A random model has no
  training run, so its bundle is written here with ``edgeops.core.bundle.write_bundle``: a tensor
  preprocessing, a baseline profiled on random images and the model's outputs on them, 1000 labels.

Per-call overhead. In one process, per model: an ``Agent(config, mqtt=False, http=False)`` with
its telemetry on (default 10 s windows, ``sample_rate`` 1.0: every call feeds the latency
histogram, the output counts and the input statistics), and two bare baselines on the same model
file, one thread each: ``runtime.run([x])`` on a second ``TFLiteRuntime`` (the agent's runtime
class) and the interpreter's own ``set_tensor``, ``invoke``, ``get_tensor``. For information only,
a fourth series is a second agent with ``sample_rate`` 0 (no input statistics). Inputs are
already float32 batches of one for the baselines; the agents get one sample without the batch
dimension, as an application would send it. Every call is timed on its own; the series run in
blocks of ``calls`` calls, rotating their order over ``rounds`` rounds (digits: 20 rounds of 3000
calls; MobileNetV2, whose calls are long while the machine's speed drifts: 60 rounds of 4;
``--quick``: 6 rounds of 1000 and 15 rounds of 4, and 2 processes of each kind below).
Reported: the median call of each series over all rounds; ``added`` (agent minus
``runtime.run``, in microseconds) and the ratio, each the median over rounds of that round's
figure (agent and bare ran back to back in it: paired, so the host's drifting speed cancels);
and their spread: the smallest and largest of the figure computed within each of 5 runs of
consecutive rounds. The windows the agent
closed are summed to check that every call was counted.

Start-up and memory. Fresh ``python -c`` processes, interleaved, each time: (a) bare: import
numpy and the TFLite interpreter the agent would use, load the model, run one inference;
(b) agent, restart: import ``device_agent``, ``Agent(...).start()`` on a store that already holds
the model, ``predict`` once; (c) agent, first boot: the same on an empty store, so ``start()``
verifies and installs the bundle first. The children compile their bytecode once into
``<out>/agent/pycache`` (``PYTHONPYCACHEPREFIX``), as an installed package would have it, in
untimed first runs. Times are taken on CLOCK_MONOTONIC, which parent and child share on Linux:
``spawn->1st`` runs from just before the parent spawns the child to the child's first result,
``py start`` is the part before the child's first line runs, ``imports`` the imports, ``load``
the interpreter's load and allocation (bare) or ``Agent.start()``, ``wall`` spawn to exit as the
parent sees it. Peak RSS is the child's ``VmHWM`` after its first prediction; its ``ru_maxrss``
would be useless here, since Linux carries the forking parent's peak (this script, with
TensorFlow loaded) across ``exec``. Whether ``tensorflow`` and a few other heavy modules were
imported is recorded for every child.

``--smoke`` (what ``make test`` runs, see ``bench_smoke.py``): the digits run trained for one
epoch, a few-layer image model at 32x32 in place of MobileNetV2, 2 rounds of 50 and of 4 calls,
and one process of each kind for the first variant of each model.

How to read it
--------------
Milliseconds and microseconds are from one shared machine; the differences and ratios in the same
run matter, not the absolute figures. The goals (the issue's) are printed last with PASS or FAIL;
the script exits 0 when a goal fails (it reports) and non-zero only if something crashed.
``--profile`` adds a cProfile of ``Agent.predict`` on the digits int8 model (cProfile's own
per-function overhead inflates every row; read it for where the time goes, not for how much).
Results go to ``<out>/agent.json``; models, bundles and stores stay under ``<out>/agent/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import cProfile
import io
import itertools
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic
from bench_smoke import SMOKE_IMAGE_MODEL, RunMode, add_mode_options, mode_of, stand_in_image_model

from converters import ConversionConfig, Format, Mode, convert
from device_agent.agent import Agent
from device_agent.config import (
    AgentConfig,
    DeviceConfig,
    ModelConfig,
    MqttConfig,
    TelemetryConfig,
)
from device_agent.runtimes import TFLITE_BACKENDS, TFLiteRuntime, tflite_interpreter_class
from edgeops.core.bundle import Bundle, write_bundle
from edgeops.core.optional import require
from edgeops.core.preprocessing import Preprocessing
from edgeops.core.profile import Profile, profile_class_outputs, profile_tensor
from edgeops.core.terminal import fmt, render
from edgeops.packaging.package import PackageConfig, package, runtime_requirements
from edgeops.trainer import samples
from edgeops.trainer.config import TrainConfig
from edgeops.trainer.run import train

FloatArray = npt.NDArray[np.float32]

DIGITS_ADDED_GOAL_US = 10.0
MOBILENET_RATIO_GOAL = 1.05
HEAVY_MODULES = ("tensorflow", "keras", "onnxruntime", "paho", "cryptography", "psutil")
"""Modules whose presence in a child process is recorded."""

BARE = "bare runtime.run"
INVOKE = "bare invoke"
AGENT = "agent.predict"
AGENT_NO_INPUTS = "agent.predict, sample_rate 0"
SPREAD_GROUPS = 5


@dataclass(frozen=True)
class Settings:
    quick: bool
    smoke: bool
    out: Path
    profile: bool
    digits_rounds: int
    """Rounds of the per-call measurement on the digits models; each runs a block of every
    series."""
    digits_calls: int
    """Calls per block on the digits models."""
    mobilenet_rounds: int
    mobilenet_calls: int
    """Short blocks, many rounds: a MobileNetV2 call is long and the machine's speed drifts."""
    startup_repeats: int
    """Fresh processes of each kind (bare, agent restart, agent first boot) per model."""
    baseline_images: int = 64
    """Random images MobileNetV2's baseline profile is made from."""
    calibration_images: int = 32
    """Random images MobileNetV2's int8 conversion is calibrated on."""
    profile_calls: int = 20_000
    digits_epochs: int = 5
    image_model: str = "mobilenetv2"
    """MobileNetV2, or the smoke runs' stand-in for it."""
    image_size: int = 224
    image_classes: int = 1000
    startup_variants: int = 2
    """Variants of each model whose start-up is measured (each model has two)."""
    clock: str = "wall"
    """How each call is timed: ``wall`` (perf_counter) or ``cpu`` (the process's CPU time, every
    thread: what the call cost this process, whatever else the shared host ran meanwhile)."""

    @classmethod
    def of(cls, mode: RunMode, out: Path, profile: bool, clock: str = "wall") -> Settings:
        quick, smoke = mode == "quick", mode == "smoke"
        if smoke:
            return cls(
                quick,
                smoke,
                out,
                profile,
                digits_rounds=2,
                digits_calls=50,
                mobilenet_rounds=2,
                mobilenet_calls=4,
                startup_repeats=1,
                baseline_images=16,
                calibration_images=8,
                profile_calls=200,
                digits_epochs=1,
                image_model=SMOKE_IMAGE_MODEL,
                image_size=32,
                image_classes=10,
                startup_variants=1,
                clock=clock,
            )
        if quick:
            return cls(
                quick,
                smoke,
                out,
                profile,
                digits_rounds=6,
                digits_calls=1000,
                mobilenet_rounds=15,
                mobilenet_calls=4,
                startup_repeats=2,
                profile_calls=5000,
                clock=clock,
            )
        return cls(
            quick,
            smoke,
            out,
            profile,
            digits_rounds=20,
            digits_calls=3000,
            mobilenet_rounds=60,
            mobilenet_calls=4,
            startup_repeats=5,
            clock=clock,
        )


@dataclass(frozen=True)
class Served:
    """A model, its bundle and inputs to feed it."""

    model: str
    variant: str
    model_file: Path
    bundle: Path
    inputs: FloatArray
    """Samples without the batch dimension."""

    @property
    def label(self) -> str:
        return f"{self.model} {self.variant}"


@dataclass(frozen=True)
class Series:
    """One series of timed calls."""

    median_us: float
    p90_us: float
    calls: int


@dataclass(frozen=True)
class Overhead:
    model: str
    variant: str
    inference_us: float
    """The bare runtime.run median: what the model itself costs."""
    series: dict[str, Series]
    added_us: float
    """agent.predict minus bare runtime.run, medians."""
    added_us_spread: tuple[float, float]
    """Smallest and largest difference of the medians within SPREAD_GROUPS runs of rounds."""
    ratio: float
    ratio_spread: tuple[float, float]
    added_vs_invoke_us: float
    ratio_vs_invoke: float
    added_without_input_stats_us: float
    """The same for an agent with ``sample_rate`` 0 (for information: where the time goes)."""
    telemetry_count: int
    """Predictions counted by the windows the agent closed."""
    agent_calls: int
    """Every agent.predict call of the measurement, warm-up included."""


@dataclass(frozen=True)
class Startup:
    model: str
    variant: str
    kind: str
    spawn_to_first_ms: float
    spawn_to_first_ms_range: tuple[float, float]
    python_start_ms: float
    imports_ms: float
    load_ms: float
    """The interpreter's load and allocation; the agent's ``start()``."""
    first_inference_ms: float
    wall_ms: float
    peak_rss_mib: float
    modules: dict[str, bool]
    """Which of HEAVY_MODULES were imported, in every repeat (True if in any)."""
    repeats: int


# --- models and bundles -------------------------------------------------------------------------


def prepare_digits(work: Path, s: Settings) -> list[Served]:
    """Train the digits run, convert it to TFLite int8 (float I/O) and fp32, package both."""
    say("digits: training the run")
    cfg = TrainConfig(target="label", epochs=s.digits_epochs)
    run = train(samples.digits_npz(work / "digits.npz"), work / "run", cfg)
    with np.load(run.split("test")) as z:
        x = np.asarray(z["x"][:64], dtype=np.float32)
    served = []
    for mode in (Mode.INT8, Mode.FP32):
        say(f"digits: converting to TFLite {mode}")
        calibration = run.split("train") if mode is Mode.INT8 else None
        cfg = ConversionConfig(
            to=Format.TFLITE, mode=mode, calibration=calibration, latency_runs=3, name="digits"
        )
        report = convert(run.model, work / "models", cfg)
        model = work / "models" / report.artifact["file"]
        pkg = PackageConfig("1.0.0", name=f"digits-{mode.value}")
        bundle = package(run, model, work / "bundles", pkg, key=None)
        served.append(Served("digits", mode.value, model, bundle, x))
    return served


def prepare_mobilenet(work: Path, s: Settings) -> list[Served]:
    """MobileNetV2 with random weights (in a smoke run, its stand-in), converted to TFLite fp32
    and int8, and bundled."""
    keras = require("keras", "convert")
    name, size = s.image_model, s.image_size
    say(f"{name}: building (random weights)")
    work.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    if s.smoke:
        net = stand_in_image_model(keras, size, s.image_classes)
    else:
        net = keras.applications.MobileNetV2(
            weights=None,
            input_tensor=keras.Input((size, size, 3), name="image"),
            classes=s.image_classes,
        )
    source = work / f"{name}.keras"
    net.save(source)
    rng = np.random.default_rng(0)
    calibration = work / "calibration.npz"
    np.savez(calibration, x=random_images(rng, s.calibration_images, size))
    baseline_x = random_images(rng, s.baseline_images, size)
    inputs = random_images(rng, 16, size)
    served = []
    for mode in (Mode.FP32, Mode.INT8):
        say(f"{name}: converting to TFLite {mode}")
        cfg = ConversionConfig(
            to=Format.TFLITE,
            mode=mode,
            calibration=calibration if mode is Mode.INT8 else None,
            calibration_samples=s.calibration_images,
            latency_runs=3,
            name=name,
        )
        report = convert(source, work / "models", cfg)
        model = work / "models" / report.artifact["file"]
        bundle = tensor_bundle(
            model, work / "bundles", name, f"1.0.0-{mode}", mode, baseline_x, inputs[:4]
        )
        served.append(Served(name, mode.value, model, bundle, inputs))
    return served


def random_images(rng: np.random.Generator, n: int, size: int) -> FloatArray:
    return rng.uniform(0.0, 1.0, size=(n, size, size, 3)).astype(np.float32)


def tensor_bundle(
    model: Path,
    out: Path,
    name: str,
    version: str,
    mode: Mode,
    baseline_x: FloatArray,
    sample_x: FloatArray,
) -> Path:
    """An unsigned bundle of an image classifier that has no training run.

    The manifest carries what ``edgeops.packaging.package.package`` writes and the agent reads
    (model, task, labels, signature, preprocessing, baseline, samples), with the baseline profiled
    here: the input tensor's per-channel mean and std over ``baseline_x``, and the classes and
    confidences of the model's outputs on them.
    """
    with TFLiteRuntime(model, threads=1) as rt:
        (info,) = rt.inputs
        outputs = np.concatenate(
            [rt.run([baseline_x[i : i + 1]])[0] for i in range(len(baseline_x))]
        )
        sample_out = np.concatenate(
            [rt.run([sample_x[i : i + 1]])[0] for i in range(len(sample_x))]
        )
        signature = {
            "inputs": [t.to_dict() for t in rt.inputs],
            "outputs": [t.to_dict() for t in rt.outputs],
        }
    assert not info.quantized, "float I/O expected"
    labels = [str(i) for i in range(outputs.shape[-1])]
    pre = Preprocessing("tensor", "image", shape=tuple(int(d) for d in baseline_x.shape[1:]))
    baseline = Profile(
        (profile_tensor(pre.input_name, baseline_x.astype(np.float64)),),
        (profile_class_outputs(outputs, labels),),
    )
    npz = io.BytesIO()
    np.savez(npz, inputs=sample_x, output_0=sample_out)
    model_file = f"model{model.suffix}"
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "parent": None,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"file": model_file, "format": "tflite", "mode": mode.value, "target": "cpu"},
        "task": "classification",
        "labels": labels,
        "signature": signature,
        "preprocessing": pre.to_dict(),
        "baseline": baseline.to_dict(),
        "samples": {"file": "samples.npz", "count": len(sample_x), "atol": 1e-4, "rtol": 1e-3},
        "min_runtime": runtime_requirements(model),
        "training": None,
    }
    out.mkdir(parents=True, exist_ok=True)
    path = write_bundle(
        out / f"{name}-{version}.bundle",
        manifest,
        {model_file: model, "samples.npz": npz.getvalue()},
        key=None,
    )
    with Bundle.open(path) as b:
        b.verify([], allow_unsigned=True)
    return path


def agent_config(store: Path, bundle: Path) -> AgentConfig:
    """MQTT and HTTP are switched off by the Agent's arguments; telemetry keeps its defaults."""
    return AgentConfig(
        device=DeviceConfig(id="bench"),
        model=ModelConfig(store=store, bundle=bundle, allow_unsigned=True, threads=1),
        mqtt=MqttConfig(outbox=store.parent / f"{store.name}-outbox.db"),
    )


# --- per-call overhead --------------------------------------------------------------------------


CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.process_time_ns}


def timed_calls(
    fn: Callable[[Any], object], args: Sequence[Any], n: int, clock_name: str = "wall"
) -> list[int]:
    """Nanoseconds of each of ``n`` calls ``fn(args[i % len(args)])`` on the named clock."""
    clock = CLOCKS[clock_name]
    found = []
    for i in range(n):
        arg = args[i % len(args)]
        t0 = clock()
        fn(arg)
        found.append(clock() - t0)
    return found


def raw_invoke(model: Path) -> Callable[[FloatArray], FloatArray]:
    """The interpreter the agent's runtime uses, called as a tutorial does; nothing else."""
    _, interpreter_cls = tflite_interpreter_class()
    interp = interpreter_cls(model_path=str(model), num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]["index"]
    out = interp.get_output_details()[0]["index"]

    def invoke(x: FloatArray) -> FloatArray:
        interp.set_tensor(inp, x)
        interp.invoke()
        return interp.get_tensor(out)  # type: ignore[no-any-return]

    return invoke


def measure_overhead(m: Served, rounds: int, calls: int, s: Settings) -> Overhead:
    root = s.out / "agent" / "stores" / f"{m.model}-{m.variant}-overhead"
    batches = [m.inputs[i : i + 1] for i in range(len(m.inputs))]
    singles = list(m.inputs)
    counted: list[int] = []
    no_inputs = replace(
        agent_config(root / "no-inputs", m.bundle), telemetry=TelemetryConfig(sample_rate=0.0)
    )
    with (
        Agent(agent_config(root / "store", m.bundle), mqtt=False, http=False) as agent,
        Agent(no_inputs, mqtt=False, http=False) as lighter,
    ):
        agent.on_window = lambda t: counted.append(t.count)
        assert agent.model is not None
        path = agent.model.entry.model_path
        bare = TFLiteRuntime(path, threads=1)
        fns: dict[str, tuple[Callable[[Any], object], list[Any]]] = {
            BARE: (bare.run, [[b] for b in batches]),
            INVOKE: (raw_invoke(path), batches),
            AGENT: (agent.predict, singles),
            AGENT_NO_INPUTS: (lighter.predict, singles),
        }
        warm = max(1, min(calls * 4, 200))
        for fn, args in fns.values():
            timed_calls(fn, args, warm, s.clock)
        times: dict[str, list[list[int]]] = {k: [] for k in fns}
        order = list(fns)
        for r in range(rounds):
            for name in order[r % len(order) :] + order[: r % len(order)]:
                fn, args = fns[name]
                times[name].append(timed_calls(fn, args, calls, s.clock))
        agent.flush_window()  # the last window; on_window sees it
        bare.close()
    series = {name: make_series(blocks) for name, blocks in times.items()}
    a, b, i = series[AGENT], series[BARE], series[INVOKE]
    groups = [
        (median_us(times[AGENT][g]), median_us(times[BARE][g])) for g in spread_groups(rounds)
    ]
    # Paired per round (agent and bare ran back to back): the host's speed drifts between
    # rounds on a shared machine, and pooled medians can then land outside every round's.
    paired = [
        (median_us([ra]), median_us([rb])) for ra, rb in zip(times[AGENT], times[BARE], strict=True)
    ]
    return Overhead(
        model=m.model,
        variant=m.variant,
        inference_us=b.median_us,
        series=series,
        added_us=statistics.median(x - y for x, y in paired),
        added_us_spread=(min(x - y for x, y in groups), max(x - y for x, y in groups)),
        ratio=statistics.median(x / y for x, y in paired),
        ratio_spread=(min(x / y for x, y in groups), max(x / y for x, y in groups)),
        added_vs_invoke_us=a.median_us - i.median_us,
        ratio_vs_invoke=a.median_us / i.median_us,
        added_without_input_stats_us=series[AGENT_NO_INPUTS].median_us - b.median_us,
        telemetry_count=sum(counted),
        agent_calls=a.calls + warm,
    )


def spread_groups(rounds: int) -> list[slice]:
    """``SPREAD_GROUPS`` runs of consecutive rounds (fewer when there are fewer rounds)."""
    n = min(SPREAD_GROUPS, rounds)
    edges = [round(k * rounds / n) for k in range(n + 1)]
    return [slice(lo, hi) for lo, hi in itertools.pairwise(edges)]


def median_us(blocks: Sequence[Sequence[int]]) -> float:
    return statistics.median([t for block in blocks for t in block]) / 1000


def make_series(blocks: Sequence[Sequence[int]]) -> Series:
    return Series(
        median_us=median_us(blocks),
        p90_us=float(np.percentile([t for block in blocks for t in block], 90)) / 1000,
        calls=sum(len(b) for b in blocks),
    )


def profile_predict(m: Served, calls: int, s: Settings) -> list[dict[str, Any]]:
    """cProfile of ``calls`` agent.predict calls: per function, microseconds per predict."""
    root = s.out / "agent" / "stores" / f"{m.model}-{m.variant}-profile"
    with Agent(agent_config(root / "store", m.bundle), mqtt=False, http=False) as agent:
        singles = list(m.inputs)
        timed_calls(agent.predict, singles, 500)
        prof = cProfile.Profile()
        prof.enable()
        timed_calls(agent.predict, singles, calls)
        prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = func if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line} {func}"
        rows.append(
            {
                "function": where,
                "calls_per_predict": ncalls / calls,
                "own_us": tottime / calls * 1e6,
                "cumulative_us": cumtime / calls * 1e6,
            }
        )
    rows.sort(key=lambda r: -r["own_us"])
    return rows


# --- start-up and memory ------------------------------------------------------------------------

_CHILD_HEAD = """\
import time
T0 = time.monotonic()
import json, sys
args = json.loads(sys.argv[1])
"""

_CHILD_TAIL = """\
T3 = time.monotonic()
with open("/proc/self/status") as f:
    hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
mods = {m: m in sys.modules for m in args["modules"]}
print(json.dumps({"t0": T0, "imported": T1, "loaded": T2, "first": T3, "hwm_kib": hwm,
                  "modules": mods, "predicted": str(y)}))
"""

BARE_CHILD = (
    _CHILD_HEAD
    + """\
import importlib
import numpy as np
Interpreter = importlib.import_module(args["interpreter"]).Interpreter
T1 = time.monotonic()
interp = Interpreter(model_path=args["model"], num_threads=1)
interp.allocate_tensors()
inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
T2 = time.monotonic()
x = np.load(args["input"])
interp.set_tensor(inp["index"], x[None, ...])
interp.invoke()
y = int(interp.get_tensor(out["index"]).argmax())
"""
    + _CHILD_TAIL
)

AGENT_CHILD = (
    _CHILD_HEAD
    + """\
from pathlib import Path
import numpy as np
from device_agent.agent import Agent
from device_agent.config import AgentConfig, DeviceConfig, ModelConfig, MqttConfig
T1 = time.monotonic()
store = Path(args["store"])
cfg = AgentConfig(
    device=DeviceConfig(id="bench"),
    model=ModelConfig(store=store, bundle=Path(args["bundle"]), allow_unsigned=True, threads=1),
    mqtt=MqttConfig(outbox=store.parent / "outbox.db"),
)
agent = Agent(cfg, mqtt=False, http=False).start()
T2 = time.monotonic()
x = np.load(args["input"])
y = agent.predict(x).predicted[0]
"""
    + _CHILD_TAIL
    + """\
agent.stop()
"""
)


def run_child(code: str, args: dict[str, Any], pycache: Path) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its JSON result with the parent's spawn and exit."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPYCACHEPREFIX": str(pycache)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # compiled once, as an installed package is
    spawned = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    exited = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return {**found, "spawned": spawned, "exited": exited}


BARE_KIND, RESTART_KIND, BOOT_KIND = "bare interpreter", "agent, restart", "agent, first boot"


def measure_startup(m: Served, s: Settings) -> list[Startup]:
    """Bare, agent restart and agent first boot, each ``startup_repeats`` times, interleaved.

    One process of each code runs first, untimed: it compiles the bytecode cache the timed ones
    read and installs the model in the store the restarts use.
    """
    root = s.out / "agent" / "stores" / f"{m.model}-{m.variant}-startup"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    x_path = root / "input.npy"
    np.save(x_path, m.inputs[0])
    with TFLiteRuntime(m.model_file) as rt:
        interpreter = dict(TFLITE_BACKENDS)[rt.backend]
    pycache = s.out / "agent" / "pycache"

    def child(kind: str, store: Path) -> dict[str, Any]:
        args = {
            "input": str(x_path),
            "modules": list(HEAVY_MODULES),
            "interpreter": interpreter,
            "model": str(m.model_file),
            "bundle": str(m.bundle),
            "store": str(store),
        }
        return run_child(BARE_CHILD if kind == BARE_KIND else AGENT_CHILD, args, pycache)

    installed = root / "restart" / "store"
    child(RESTART_KIND, installed)
    child(BARE_KIND, installed)
    kinds = [BARE_KIND, RESTART_KIND, BOOT_KIND]
    found: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for r in range(s.startup_repeats):
        for kind in kinds if r % 2 == 0 else reversed(kinds):
            store = root / f"boot-{r}" / "store" if kind == BOOT_KIND else installed
            found[kind].append(child(kind, store))
    return [startup_row(m, kind, runs) for kind, runs in found.items()]


def startup_row(m: Served, kind: str, runs: Sequence[dict[str, Any]]) -> Startup:
    def med(key: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(key(r) for r in runs) * 1000

    firsts = [(r["first"] - r["spawned"]) * 1000 for r in runs]
    return Startup(
        model=m.model,
        variant=m.variant,
        kind=kind,
        spawn_to_first_ms=statistics.median(firsts),
        spawn_to_first_ms_range=(min(firsts), max(firsts)),
        python_start_ms=med(lambda r: r["t0"] - r["spawned"]),
        imports_ms=med(lambda r: r["imported"] - r["t0"]),
        load_ms=med(lambda r: r["loaded"] - r["imported"]),
        first_inference_ms=med(lambda r: r["first"] - r["loaded"]),
        wall_ms=med(lambda r: r["exited"] - r["spawned"]),
        peak_rss_mib=statistics.median(r["hwm_kib"] for r in runs) / 1024,
        modules={k: any(r["modules"][k] for r in runs) for k in HEAVY_MODULES},
        repeats=len(runs),
    )


# --- goals and output ---------------------------------------------------------------------------


def goals(overheads: Sequence[Overhead], startups: Sequence[Startup]) -> list[Goal]:
    found = []
    for o in overheads:
        lo, hi = o.added_us_spread
        if o.model == "digits":
            found.append(
                Goal(
                    f"digits {o.variant}: agent adds <= {DIGITS_ADDED_GOAL_US:g} us per call",
                    f"{o.added_us:.1f} us (spread {lo:.1f} to {hi:.1f}; "
                    f"{o.added_vs_invoke_us:.1f} us over raw invoke)",
                    o.added_us <= DIGITS_ADDED_GOAL_US,
                )
            )
        else:
            rlo, rhi = o.ratio_spread
            found.append(
                Goal(
                    f"{o.model} {o.variant}: agent / bare <= {MOBILENET_RATIO_GOAL:g}",
                    f"{o.ratio:.3f} (spread {rlo:.3f} to {rhi:.3f}; +{o.added_us:.0f} us; "
                    f"{o.ratio_vs_invoke:.3f} over raw invoke)",
                    o.ratio <= MOBILENET_RATIO_GOAL,
                )
            )
        found.append(
            Goal(
                f"{o.model} {o.variant}: telemetry counted every agent call",
                f"{o.telemetry_count} of {o.agent_calls}",
                o.telemetry_count == o.agent_calls,
            )
        )
    agent_tf = [
        f"{r.model} {r.variant}"
        for r in startups
        if r.kind != BARE_KIND and r.modules["tensorflow"]
    ]
    found.append(
        Goal(
            "agent processes do not import tensorflow",
            "imported in: " + ", ".join(agent_tf) if agent_tf else "not imported",
            not agent_tf,
        )
    )
    return found


def overhead_table(rows: Sequence[Overhead], clock: str = "wall") -> str:
    headers = (
        "model",
        "variant",
        "invoke us",
        "run us",
        "agent us",
        "agent p90",
        "added us",
        "spread",
        "ratio",
        "spread",
        "no inputs: added",
        "calls",
    )
    cells = [
        (
            o.model,
            o.variant,
            f"{o.series[INVOKE].median_us:.1f}",
            f"{o.series[BARE].median_us:.1f}",
            f"{o.series[AGENT].median_us:.1f}",
            f"{o.series[AGENT].p90_us:.1f}",
            f"{o.added_us:.1f}",
            f"{o.added_us_spread[0]:.1f} .. {o.added_us_spread[1]:.1f}",
            f"{o.ratio:.3f}",
            f"{o.ratio_spread[0]:.3f} .. {o.ratio_spread[1]:.3f}",
            f"{o.added_without_input_stats_us:.1f}",
            f"{o.series[AGENT].calls:,}",
        )
        for o in rows
    ]
    title = (
        f"Per-call cost ({clock} clock), batch 1, 1 thread, telemetry on: median call (us) of "
        "interleaved rounds. "
        "invoke: set_tensor/invoke/get_tensor; run: TFLiteRuntime.run; added and ratio: "
        f"agent.predict against run; spread: smallest and largest of {SPREAD_GROUPS} runs of "
        "rounds; no inputs: an agent with sample_rate 0, for information"
    )
    return render(headers, cells, title=title)


def startup_table(rows: Sequence[Startup], s: Settings) -> str:
    bare = {(r.model, r.variant): r for r in rows if r.kind == BARE_KIND}
    headers = (
        "model",
        "variant",
        "process",
        "spawn->1st ms",
        "x bare",
        "py start",
        "imports",
        "load",
        "1st infer",
        "wall ms",
        "peak RSS MiB",
        "x bare",
        "tensorflow",
    )
    cells = []
    for r in rows:
        b = bare[(r.model, r.variant)]
        cells.append(
            (
                r.model,
                r.variant,
                r.kind,
                f"{r.spawn_to_first_ms:.0f}",
                f"{r.spawn_to_first_ms / b.spawn_to_first_ms:.2f}",
                f"{r.python_start_ms:.0f}",
                f"{r.imports_ms:.0f}",
                f"{r.load_ms:.0f}",
                f"{r.first_inference_ms:.1f}",
                f"{r.wall_ms:.0f}",
                f"{r.peak_rss_mib:.1f}",
                f"{r.peak_rss_mib / b.peak_rss_mib:.2f}",
                fmt(r.modules["tensorflow"]),
            )
        )
    title = (
        f"Start-up and memory of fresh processes (median of {s.startup_repeats}; milliseconds; "
        "load = interpreter load or Agent.start())"
    )
    return render(headers, cells, title=title)


def profile_table(rows: Sequence[dict[str, Any]], top: int = 15) -> str:
    cells = [
        (
            r["function"],
            fmt(r["calls_per_predict"], 2),
            f"{r['own_us']:.2f}",
            f"{r['cumulative_us']:.2f}",
        )
        for r in rows[:top]
    ]
    return render(
        ("function", "calls/predict", "own us", "cumulative us"),
        cells,
        title="cProfile of agent.predict, digits int8 (per predict; cProfile overhead included)",
    )


def versions() -> dict[str, str]:
    return package_versions(
        ("edgeops", "ai-edge-litert", "tflite-runtime", "tensorflow-cpu", "keras", "numpy")
    )


def write_json(path: Path, s: Settings, **parts: Any) -> None:
    doc = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {**asdict(s), "out": str(s.out)},
        "host": {"cpus": os.cpu_count(), "platform": sys.platform},
        **parts,
        "versions": versions(),
        "seconds": elapsed(),
    }
    write_json_atomic(path, doc)


# --- main ---------------------------------------------------------------------------------------


@dataclass
class Results:
    overheads: list[Overhead] = field(default_factory=list)
    startups: list[Startup] = field(default_factory=list)
    profile: list[dict[str, Any]] = field(default_factory=list)


def variants_of(served: Sequence[Served], model: str) -> list[str]:
    """The variants of ``model`` among ``served``, in order."""
    return [m.variant for m in served if m.model == model]


def run(s: Settings) -> None:
    if sys.platform != "linux":
        raise SystemExit("this benchmark reads CLOCK_MONOTONIC across processes: Linux only")
    work = s.out / "agent"
    shutil.rmtree(work, ignore_errors=True)
    served = prepare_digits(work / "digits", s) + prepare_mobilenet(work / s.image_model, s)
    found = Results()
    for m in served:
        rounds, calls = (
            (s.digits_rounds, s.digits_calls)
            if m.model == "digits"
            else (s.mobilenet_rounds, s.mobilenet_calls)
        )
        say(f"{m.label}: per-call overhead, {rounds} rounds of {calls} calls")
        found.overheads.append(measure_overhead(m, rounds, calls, s))
    for m in [m for m in served if m.variant in variants_of(served, m.model)[: s.startup_variants]]:
        say(f"{m.label}: start-up, {s.startup_repeats} x 3 processes")
        found.startups += measure_startup(m, s)
    if s.profile:
        say("digits int8: profiling agent.predict")
        found.profile = profile_predict(served[0], s.profile_calls, s)
    met = goals(found.overheads, found.startups)

    print(overhead_table(found.overheads, s.clock))
    print()
    print(startup_table(found.startups, s))
    if found.profile:
        print()
        print(profile_table(found.profile))
    print()
    print(goal_lines(met))
    out = s.out / "agent.json"
    write_json(
        out,
        s,
        overhead=[asdict(o) for o in found.overheads],
        startup=[asdict(r) for r in found.startups],
        profile=found.profile[:40],
        goals=[asdict(g) for g in met],
        all_goals_pass=all(g.passed for g in met),
        bundles={m.label: str(m.bundle) for m in served},
    )
    say(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_mode_options(ap, "fewer rounds, calls and processes")
    ap.add_argument("--profile", action="store_true", help="also cProfile agent.predict on digits")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="time calls by wall clock, or by this process's CPU time (steadier on a busy host)",
    )
    ap.add_argument(
        "--mobilenet-rounds",
        type=int,
        default=None,
        help="rounds of the MobileNetV2 per-call measurement (more: a tighter median)",
    )
    args = ap.parse_args(argv)
    s = Settings.of(mode_of(args), args.out, args.profile, args.clock)
    if args.mobilenet_rounds is not None:
        s = replace(s, mobilenet_rounds=args.mobilenet_rounds)
    run(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
