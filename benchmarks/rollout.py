"""Rollout benchmark: a staged rollout through a simulated fleet of real agents, and the abort
of a failing canary, each against the floor its settings impose.

Run::

    python benchmarks/rollout.py [--quick | --smoke] [--out benchmarks/results]

What it measures
----------------
Bundles: the digits CNN of the training pipeline (``edgeops.trainer.train`` on scikit-learn's
digits, 5 epochs), converted by ``converters.convert`` to TFLite int8 (float I/O) and to TFLite
fp32, packaged by ``edgeops.packaging.package.package`` and signed: ``digits 1.0.0`` (int8, what
every device starts on) and ``digits 1.1.0`` (fp32: another conversion of the same run, a real
update that passes). ``edgeops.testing.write_bad_bundles`` makes ``digits 1.1.1`` from 1.1.0 with
wrong sample outputs, signed by the same key: it downloads and verifies, then fails the device's
sample check before the switch.

One process holds everything but the broker: one ``edgeops.testing.Mosquitto``, one
``Service`` (SQLite, ``http_port=0``, ``rollout_interval`` at its default, its commands signed
by a command key the devices trust; devices download only from the service) and two
``edgeops.simulate.Fleet`` of real agents, each device with its own store, outbox and MQTT link:
``bench`` with 200 devices (``--quick``: 40) and ``solo`` with 3 (``--quick``: 2), all
predicting 0.5 digits per second (a low rate), telemetry windows of 10 s (the agent's default).
200 agents hold more than 1,024 descriptors: the simulator's poll()-based select shim for paho
is on for the whole process (the service's client too), and the script raises its soft
``RLIMIT_NOFILE`` towards the hard limit when it is lower than the fleet needs (recorded).

Every deployment's policy: stages 1, 10, 50, 100 % (200 devices: 2, 20, 100, 200; 40: 1, 4,
20, 40), a bake B of 5 s (``--quick``: 2 s), timeout T of 60 s, a device health window of
``health_predictions=5`` and ``health_seconds=5``; the rest at ``RolloutPolicy``'s defaults
(``min_devices`` 5, ``abort_failure_rate`` 0.05, ``success_threshold`` 0.95, no latency gate).
At 0.5 predictions per second five predictions take longer than 5 s, so every device's health
window lasts exactly ``health_seconds``: H = 5 s.

In order:

1. Single-device baseline: 1.0.0 -> 1.1.0 on each ``solo`` device in turn, a deployment of one
   device (one stage, no bake), while the ``bench`` fleet runs: a single device's update time on
   the same machine under the same background load.
2. Failing canary: 1.0.0 -> 1.1.1 on the whole ``bench`` fleet (on 1.0.0). Times run from the
   deployment's creation (its history) to the canaries' ``update-failed`` events (the device's
   clock: the same host's) and to the service's decisions, to ``aborting`` and ``aborted`` in
   its history. The abort delay, from the last canary's failure (the policy judges once every
   device sent so far has decided) to ``aborting``, is set against ``rollout_interval``, B and
   T. Then: no device but the canaries sent an event for the deployment's commands, and every
   device serves 1.0.0 (``Fleet.stats()``).
3. Good rollout: 1.0.0 -> 1.1.0 on the whole ``bench`` fleet. The total time, creation to
   ``completed``, is set against the floor the settings impose, stages x (H + B): each stage
   waits for its devices' health windows, then bakes. Per stage, from the history: the update
   phase (start to every device decided) and the bake. Per device, the service's
   command-to-decided time (``sent`` to ``decided``), p50, p95 and max, against the median of
   the single-device baseline, and where it goes, from the device's ``update-<state>`` events:
   ``deliver`` (command published to ``update-downloading``), ``prepare`` (to
   ``update-switching``: download, verify, install, sample check, latency bench), ``switch``
   (to ``update-health``), ``health`` (to ``update-committed``) and ``report`` (to the
   service's decision: outbox, broker, storing, the next rollout step). Then every device must
   serve 1.1.0 (``Fleet.stats()``).

The service decides on its rollout steps (every ``rollout_interval``, 0.5 s): a stage's devices
are sent in one step and the ones that answer in the same interval share one ``decided`` time,
so the service's figures come in steps of about 0.5 s.

Also recorded, per phase: the wall time of every rollout step (``Rollouts.tick``, timed by a
wrapper on the service's own object) and the CPU time of the slowest one's thread; the deepest
queue of device messages waiting to be stored (sampled while waiting); the lag of a probe thread
that sleeps 5 ms at a time (how long a thread of this process waits to run again: every agent,
the broker's clients and the service share the GIL and 2 cores, which real devices do not); and
the predictions the simulator's feeders skipped because the host fell behind.

``--smoke`` (what ``make test`` runs, see ``bench_smoke.py``): the digits run trained for one
epoch, 4 devices and 1 solo device predicting 2 times a second, 1-s telemetry windows, stages
50 and 100 %, a 0.5-s bake and a 1-s health window.

How to read it
--------------
Seconds are from one shared 2-core machine that also runs every agent; the ratios against the
floor and against the single device, measured in the same run, matter. The goals are printed
last with PASS or FAIL; the script exits 0 when a goal fails (it reports) and non-zero only if
something crashed. Results go to ``<out>/rollout.json``; the bundles, keys and the service's
database stay under ``<out>/rollout/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import contextlib
import logging
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic
from bench_smoke import RunMode, add_mode_options, mode_of

from edgeops.core.errors import RolloutError
from edgeops.core.terminal import fmt, render
from edgeops.service import rollout_policy as ro
from edgeops.service.config import ServiceConfig
from edgeops.service.rollout_policy import RolloutPolicy
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.simulate import Fleet, FleetConfig
from edgeops.testing import Mosquitto, write_bad_bundles

FLEET = "bench"
SOLO_FLEET = "solo"
OVERHEAD_GOAL = 1.5
"""The good rollout's time over the floor its settings impose."""
ABORT_INTERVALS_GOAL = 4.0
"""The abort may come at most this many rollout steps after the last canary failed."""
ABORT_TIMEOUT_SHARE_GOAL = 0.1
"""... and within this share of the policy's timeout."""
DESCRIPTORS_PER_DEVICE = 12
"""Descriptors a simulated device may hold (socket, wake-up pair, outbox and its WAL, shm,
model files), with room to spare: the soft RLIMIT_NOFILE is raised to cover the fleet."""
LAG_PROBE_SLEEP = 0.005
PHASES = ("deliver", "prepare", "switch", "health", "report")
"""Where a device's update time goes; see the module docstring."""


@dataclass(frozen=True)
class Settings:
    quick: bool
    smoke: bool
    out: Path
    devices: int
    solo_devices: int
    """Single-device deployments of the baseline, one after the other."""
    bake: float
    timeout: float = 60.0
    stages: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0)
    health_predictions: int = 5
    health_seconds: float = 5.0
    rate: float = 0.5
    """Predictions per second per device: low, so that the health window's seconds end it."""
    window_seconds: float = 10.0
    """The devices' telemetry windows (the agent's default)."""
    poll: float = 0.25
    """Seconds between status reads while waiting (measurements come from the history)."""
    epochs: int = 5
    """The digits run's training epochs."""

    @classmethod
    def of(cls, mode: RunMode, out: Path) -> Settings:
        quick, smoke = mode == "quick", mode == "smoke"
        if smoke:
            return cls(
                quick,
                smoke,
                out,
                devices=4,
                solo_devices=1,
                bake=0.5,
                stages=(50.0, 100.0),
                health_predictions=2,
                health_seconds=1.0,
                rate=2.0,
                window_seconds=1.0,
                poll=0.1,
                epochs=1,
            )
        if quick:
            return cls(quick, smoke, out, devices=40, solo_devices=2, bake=2.0)
        return cls(quick, smoke, out, devices=200, solo_devices=3, bake=5.0)

    def policy(self, **changes: Any) -> RolloutPolicy:
        base = RolloutPolicy(
            stages=self.stages,
            bake=self.bake,
            timeout=self.timeout,
            health_predictions=self.health_predictions,
            health_seconds=self.health_seconds,
        )
        return RolloutPolicy.from_dict({**base.to_dict(), **changes})

    @property
    def health_window(self) -> float:
        """H: the first of ``health_predictions`` at ``rate`` and ``health_seconds``."""
        return min(self.health_seconds, self.health_predictions / self.rate)


@dataclass(frozen=True)
class Prepared:
    old: Path
    good: Path
    corrupt: Path
    data: Path
    public_key: Path
    command_key: Path
    """The service's command key (private); devices trust ``command_public``."""
    command_public: Path


# --- bundles ------------------------------------------------------------------------------------


def prepare(work: Path, epochs: int) -> Prepared:
    """Train the digits run; 1.0.0 (TFLite int8, float I/O) and 1.1.0 (TFLite fp32), signed;
    1.1.1, 1.1.0 with wrong sample outputs."""
    from converters import ConversionConfig, Format, Mode, convert
    from edgeops.core.signing import generate_keypair, load_signing_key
    from edgeops.packaging.package import PackageConfig, package
    from edgeops.trainer import samples
    from edgeops.trainer.config import TrainConfig
    from edgeops.trainer.run import train

    say("digits: training the run")
    data = samples.digits_npz(work / "digits.npz")
    run = train(data, work / "run", TrainConfig(target="label", epochs=epochs))
    private, public = generate_keypair(work / "keys", "fleet")
    made = []
    for mode, version in ((Mode.INT8, "1.0.0"), (Mode.FP32, "1.1.0")):
        say(f"digits: converting to TFLite {mode}, packaging {version}")
        cfg = ConversionConfig(
            to=Format.TFLITE,
            mode=mode,
            calibration=run.split("train") if mode is Mode.INT8 else None,
            latency_runs=3,
            name=f"digits-{mode}",
        )
        report = convert(run.model, work / "models", cfg)
        made.append(
            package(
                run,
                work / "models" / report.artifact["file"],
                work / "bundles",
                PackageConfig(version, name="digits"),
                key=load_signing_key(private),
            )
        )
    (work / "bad").mkdir()
    _, corrupt = write_bad_bundles(work / "bad", made[1], (private, public), work / "rogue-key")
    command_key, command_public = generate_keypair(work / "keys", "command")
    return Prepared(made[0], made[1], corrupt, data, public, command_key, command_public)


# --- the process --------------------------------------------------------------------------------


def raise_descriptor_limit(devices: int) -> dict[str, int]:
    """Raise the soft RLIMIT_NOFILE towards the hard limit when the fleet needs more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1024 + DESCRIPTORS_PER_DEVICE * devices
    new = soft
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        say(f"raised the soft descriptor limit from {soft} to {new}")
    return {"soft_before": soft, "soft": new, "hard": hard, "wanted": want}


def open_descriptors() -> int | None:
    """Descriptors this process holds now (Linux), or None."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


@dataclass(frozen=True)
class Load:
    """The service and the process during one phase."""

    steps_ms: Spread
    """Wall time of each rollout step (``Rollouts.tick``)."""
    slowest_step_cpu_ms: float | None
    """The CPU time the slowest step's thread used: the rest of its wall time was waiting."""
    store_queue_max: int
    """The most device messages waiting for the service's store worker (sampled)."""
    lag_ms: Spread
    """How much longer than asked a 5-ms sleep of a probe thread took: how long a thread of this
    process waits to run again (the GIL, which every agent shares, and the 2 cores)."""


class Watch:
    """Times every ``Rollouts.tick`` of a service (its loop and ``deploy``'s first step, by a
    wrapper on the service's own object), samples its store queue while waiting, and runs the
    lag probe; :meth:`take` returns what was seen since the last call."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._steps: list[tuple[float, float]] = []
        self._lags: list[float] = []
        self._queue_max = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        tick = service.rollouts.tick

        def timed(only: str | None = None) -> None:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                tick(only=only)
            finally:
                wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
                with self._lock:
                    self._steps.append((wall, cpu))

        service.rollouts.tick = timed  # type: ignore[method-assign]
        self._probe = threading.Thread(target=self._lag_probe, name="bench-probe", daemon=True)
        self._probe.start()

    def _lag_probe(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(LAG_PROBE_SLEEP)
            lag = time.perf_counter() - t0 - LAG_PROBE_SLEEP
            with self._lock:
                self._lags.append(lag)

    def stop(self) -> None:
        self._stop.set()
        self._probe.join()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def sample(self) -> None:
        # The intake's queue depth is what a slow store looks like.
        self._queue_max = max(self._queue_max, self.service.intake.depth()[0])

    def until(self, cond: Callable[[], bool], limit: float, poll: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.sample()
            if cond():
                return True
            time.sleep(poll)
        return cond()

    def take(self) -> Load:
        with self._lock:
            steps, self._steps = self._steps, []
            lags, self._lags = self._lags, []
        queue_max, self._queue_max = self._queue_max, 0
        slowest = max(steps, default=None)
        return Load(
            steps_ms=Spread.of([wall * 1000 for wall, _ in steps]),
            slowest_step_cpu_ms=None if slowest is None else slowest[1] * 1000,
            store_queue_max=queue_max,
            lag_ms=Spread.of([lag * 1000 for lag in lags]),
        )


def follow(
    service: Service, watch: Watch, dep_id: str, limit: float, poll: float
) -> dict[str, Any]:
    """Wait until the deployment has completed or aborted; the history's entries as progress
    lines. Its last status; after ``limit`` seconds, its status then, and it is aborted so that
    the next phase starts alone."""
    shown = 0
    status: dict[str, Any] = {}

    def done() -> bool:
        nonlocal shown, status
        status = service.rollouts.status(dep_id)
        history = status["history"]
        created = history[0][0]
        for t, _, what in history[shown:]:
            say(f"  {dep_id}: +{t - created:5.1f} s {what}")
        shown = len(history)
        return bool(status["state"] in ("completed", "aborted"))

    if not watch.until(done, limit, poll):
        say(f"  {dep_id}: still {status['state']} after {limit:.0f} s; aborting it")
        with contextlib.suppress(RolloutError):
            service.rollouts.abort(dep_id, "the benchmark's time limit")
    return status


def wait_known(service: Service, watch: Watch, fleet: str, n: int, limit: float) -> float:
    """Seconds until the service holds ``n`` online devices of ``fleet``."""
    t0 = time.monotonic()

    def known() -> bool:
        return sum(bool(d["online"]) for d in service.store.devices.all(fleet)) >= n

    if not watch.until(known, limit, 0.5):
        online = sum(bool(d["online"]) for d in service.store.devices.all(fleet))
        raise RuntimeError(f"the service sees {online} of {n} devices of {fleet} online")
    return time.monotonic() - t0


def deployment_events(service: Service, dep_id: str) -> dict[str, dict[str, float]]:
    """Per device, the first time (the device's ``sent``) of each event kind answering one of the
    deployment's commands."""
    e = schema.events.c
    with service.store.begin() as conn:
        rows = conn.execute(
            sa.select(e.device, e.kind, e.sent).where(e.command_id.like(f"{dep_id}/%"))
        ).all()
    found: dict[str, dict[str, float]] = {}
    for device, kind, sent in rows:
        kinds = found.setdefault(device, {})
        kinds[kind] = min(kinds.get(kind, sent), float(sent))
    return found


# --- per device ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceUpdate:
    """One device in one deployment, as the service and the device's events tell it."""

    device: str
    stage: int
    state: str
    sent: float | None
    decided: float | None
    events: dict[str, float]

    @property
    def update_s(self) -> float | None:
        """The service's command-to-decided time."""
        if self.sent is None or self.decided is None:
            return None
        return self.decided - self.sent

    def phases(self) -> dict[str, float | None]:
        """Where the update time went (seconds per phase; None where an event is missing)."""
        ev = self.events
        end = ev.get("update-committed") or ev.get("update-failed") or ev.get("update-rolled-back")
        marks = [
            self.sent,
            ev.get("update-downloading"),
            ev.get("update-switching"),
            ev.get("update-health"),
            end,
            self.decided,
        ]
        return {
            name: None if a is None or b is None else b - a
            for name, a, b in zip(PHASES, marks, marks[1:], strict=False)
        }


def device_updates(service: Service, status: dict[str, Any]) -> list[DeviceUpdate]:
    events = deployment_events(service, status["id"])
    return [
        DeviceUpdate(
            device=d["device"],
            stage=int(d["stage"]),
            state=d["state"],
            sent=d["sent"],
            decided=d["decided"],
            events=events.get(d["device"], {}),
        )
        for d in status["device_states"]
    ]


@dataclass(frozen=True)
class Spread:
    n: int
    p50: float | None
    p95: float | None
    max: float | None

    @classmethod
    def of(cls, values: Sequence[float | None]) -> Spread:
        known = [v for v in values if v is not None]
        if not known:
            return cls(0, None, None, None)
        a = np.asarray(known)
        return cls(len(known), float(np.percentile(a, 50)), float(np.percentile(a, 95)), max(known))


def phase_spreads(updates: Sequence[DeviceUpdate]) -> dict[str, Spread]:
    found = {"total": Spread.of([u.update_s for u in updates])}
    per = [u.phases() for u in updates]
    for name in PHASES:
        found[name] = Spread.of([p[name] for p in per])
    return found


# --- 1. the single-device baseline --------------------------------------------------------------


@dataclass(frozen=True)
class Solo:
    devices: list[str]
    update_s: list[float]
    median_s: float
    phases_median: dict[str, float | None]
    states: list[str]
    load: Load


def measure_solo(service: Service, watch: Watch, solo: Fleet, s: Settings, version: str) -> Solo:
    """1.0.0 -> ``version`` on each solo device in turn: deployments of one device, no bake."""
    policy = s.policy(stages=[100.0], bake=0.0)
    watch.take()
    updates = []
    for device in solo.device_ids:
        say(f"single-device baseline: {device}")
        dep = service.deploy(f"digits-{version}", SOLO_FLEET, devices=[device], policy=policy)
        status = follow(service, watch, dep["id"], s.timeout + 30, s.poll)
        updates += device_updates(service, status)
    times = [u.update_s for u in updates if u.update_s is not None and u.state == ro.COMMITTED]
    spreads = phase_spreads(updates)
    phases = {name: spreads[name].p50 for name in PHASES}
    return Solo(
        devices=[u.device for u in updates],
        update_s=times,
        median_s=statistics.median(times) if times else float("nan"),
        phases_median=phases,
        states=[u.state for u in updates],
        load=watch.take(),
    )


# --- 2. the failing canary ----------------------------------------------------------------------


@dataclass(frozen=True)
class Abort:
    deployment: str
    devices: int
    stage_sizes: list[int]
    state: str
    reason: str | None
    canaries: list[str]
    canary_states: list[str]
    canary_reasons: list[str | None]
    canary_failed_s: list[float]
    """Creation to each canary's ``update-failed`` (the device's clock)."""
    canary_decided_s: list[float]
    """Creation to each canary's decision in the service."""
    aborting_s: float | None
    aborted_s: float | None
    abort_delay_s: float | None
    """The last canary's failure to ``aborting``: what the service adds."""
    abort_delay_first_s: float | None
    """The first canary's failure to ``aborting``."""
    aborted_after_aborting_s: float | None
    counts: dict[str, int]
    touched_others: list[str]
    """Devices other than the canaries that sent any event for the deployment's commands."""
    on_old: int
    not_on_old: dict[str, str | None]
    load: Load


def history_time(status: dict[str, Any], prefix: str) -> float | None:
    """Seconds from creation to the first history entry starting with ``prefix``."""
    history = status["history"]
    created = history[0][0]
    return next((t - created for t, _, what in history if what.startswith(prefix)), None)


def measure_abort(service: Service, watch: Watch, fleet: Fleet, s: Settings, version: str) -> Abort:
    watch.take()
    say(f"failing canary: digits {version} to {s.devices} devices")
    dep = service.deploy(f"digits-{version}", FLEET, policy=s.policy())
    status = follow(service, watch, dep["id"], s.timeout + 60, s.poll)
    updates = device_updates(service, status)
    created = status["history"][0][0]
    canaries = [u for u in updates if u.stage == 0]
    failed_at = [u.events.get("update-failed") for u in canaries]
    failed_s = sorted(t - created for t in failed_at if t is not None)
    decided_s = sorted(u.decided - created for u in canaries if u.decided is not None)
    aborting = history_time(status, "aborting")
    aborted = history_time(status, "aborted")
    complete = len(failed_s) == len(canaries) and aborting is not None
    stats = {d.device: d.model for d in fleet.stats()}
    old = "digits 1.0.0"
    return Abort(
        deployment=status["id"],
        devices=len(updates),
        stage_sizes=list(status["stage_sizes"]),
        state=status["state"],
        reason=status["reason"],
        canaries=[u.device for u in canaries],
        canary_states=[u.state for u in canaries],
        canary_reasons=[d["reason"] for d in status["device_states"] if d["stage"] == 0],
        canary_failed_s=failed_s,
        canary_decided_s=decided_s,
        aborting_s=aborting,
        aborted_s=aborted,
        abort_delay_s=aborting - failed_s[-1] if complete and aborting is not None else None,
        abort_delay_first_s=aborting - failed_s[0] if failed_s and aborting is not None else None,
        aborted_after_aborting_s=(
            aborted - aborting if aborted is not None and aborting is not None else None
        ),
        counts=dict(status["counts"]),
        touched_others=sorted(u.device for u in updates if u.stage > 0 and u.events),
        on_old=sum(m == old for m in stats.values()),
        not_on_old={d: m for d, m in stats.items() if m != old},
        load=watch.take(),
    )


# --- 3. the good rollout ------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    stage: int
    devices: int
    """Devices this stage added."""
    cumulative: int
    start_s: float
    """From the deployment's creation."""
    decided_s: float | None
    """Start to the stage's last device decided."""
    bake_s: float | None
    """The last device decided to the next stage's start (or ``completed``)."""
    total_s: float | None
    floor_s: float
    update: Spread
    """The stage's devices' command-to-decided times."""


@dataclass(frozen=True)
class Good:
    deployment: str
    devices: int
    stage_sizes: list[int]
    state: str
    reason: str | None
    total_s: float | None
    floor_s: float
    ratio: float | None
    overhead_s: float | None
    stages: list[Stage]
    update: dict[str, Spread]
    """Per phase (and ``total``): the devices' times."""
    vs_solo: dict[str, float | None]
    """p50, p95 and max of the devices' update time over the single device's median."""
    counts: dict[str, int]
    on_new: int
    not_on_new: dict[str, str | None]
    service_on_new: int
    """Devices the service's own table shows on 1.1.0 (a few seconds allowed)."""
    load: Load


def measure_good(
    service: Service,
    watch: Watch,
    fleet: Fleet,
    s: Settings,
    solo: Solo,
    version: str,
) -> Good:
    watch.take()
    stage_floor = s.health_window + s.bake
    floor = stage_floor * len(ro.stage_sizes(s.devices, s.policy()))
    say(f"good rollout: digits {version} to {s.devices} devices (floor {floor:.0f} s)")
    dep = service.deploy(f"digits-{version}", FLEET, policy=s.policy())
    status = follow(service, watch, dep["id"], 4 * floor + s.timeout + 60, s.poll)
    load = watch.take()
    updates = device_updates(service, status)
    created = status["history"][0][0]
    sizes = list(status["stage_sizes"])
    total = history_time(status, "completed")
    stages = []
    for i, size in enumerate(sizes):
        start = 0.0 if i == 0 else history_time(status, f"stage {i + 1} started")
        end = history_time(status, f"stage {i + 2} started" if i + 1 < len(sizes) else "completed")
        mine = [u for u in updates if u.stage == i]
        decided = [u.decided - created for u in mine if u.decided is not None]
        last = max(decided) if decided and len(decided) == len(mine) else None
        stages.append(
            Stage(
                stage=i + 1,
                devices=len(mine),
                cumulative=size,
                start_s=start if start is not None else float("nan"),
                decided_s=None if last is None or start is None else last - start,
                bake_s=None if last is None or end is None else end - last,
                total_s=None if end is None or start is None else end - start,
                floor_s=stage_floor,
                update=Spread.of([u.update_s for u in mine]),
            )
        )
    spreads = phase_spreads(updates)
    t = spreads["total"]
    vs_solo = {
        k: None if v is None or not solo.median_s else v / solo.median_s
        for k, v in (("p50", t.p50), ("p95", t.p95), ("max", t.max))
    }
    stats = {d.device: d.model for d in fleet.stats()}
    new = f"digits {version}"

    def service_on_new() -> int:
        return sum(d["model_version"] == version for d in service.store.devices.all(FLEET))

    watch.until(lambda: service_on_new() >= s.devices, 15.0, 0.5)
    return Good(
        deployment=status["id"],
        devices=len(updates),
        stage_sizes=sizes,
        state=status["state"],
        reason=status["reason"],
        total_s=total,
        floor_s=floor,
        ratio=None if total is None else total / floor,
        overhead_s=None if total is None else total - floor,
        stages=stages,
        update=spreads,
        vs_solo=vs_solo,
        counts=dict(status["counts"]),
        on_new=sum(m == new for m in stats.values()),
        not_on_new={d: m for d, m in stats.items() if m != new},
        service_on_new=service_on_new(),
        load=load,
    )


# --- goals and output ---------------------------------------------------------------------------


def goals(good: Good, abort: Abort, s: Settings, interval: float) -> list[Goal]:
    found = [
        Goal(
            f"good rollout completes, all {s.devices} devices on 1.1.0",
            f"{good.state}; {good.on_new} of {s.devices} on 1.1.0"
            + (f"; not: {', '.join(sorted(good.not_on_new))[:200]}" if good.not_on_new else ""),
            good.state == "completed" and good.on_new == s.devices,
        ),
        Goal(
            f"good rollout time <= {OVERHEAD_GOAL:g} x the settings' floor",
            f"{fmt(good.ratio)} ({fmt(good.total_s)} s vs floor {good.floor_s:g} s, "
            f"+{fmt(good.overhead_s)} s)",
            good.ratio is not None and good.ratio <= OVERHEAD_GOAL,
        ),
    ]
    d = abort.abort_delay_s
    found.append(
        Goal(
            f"abort <= {ABORT_INTERVALS_GOAL:g} x rollout_interval after the canaries failed, "
            f"< {ABORT_TIMEOUT_SHARE_GOAL:g} x timeout",
            "no abort"
            if d is None
            else f"{d:.2f} s = {d / interval:.1f} x {interval:g} s, {d / s.timeout:.3f} x "
            f"{s.timeout:g} s ({abort.state})",
            d is not None
            and abort.state == "aborted"
            and d <= ABORT_INTERVALS_GOAL * interval
            and d < ABORT_TIMEOUT_SHARE_GOAL * s.timeout,
        )
    )
    canaries_failed = all(st == ro.FAILED for st in abort.canary_states)
    found.append(
        Goal(
            "after the abort: only canaries touched, every device on 1.0.0",
            f"canaries ({len(abort.canaries)}) {'/'.join(sorted(set(abort.canary_states)))}; "
            f"{len(abort.touched_others)} others touched; "
            f"{abort.on_old} of {s.devices} on 1.0.0",
            canaries_failed and not abort.touched_others and abort.on_old == s.devices,
        )
    )
    return found


def good_tables(g: Good, solo: Solo, s: Settings) -> str:
    stage_rows: list[tuple[object, ...]] = [
        (
            st.stage,
            st.devices,
            st.cumulative,
            f"{st.start_s:.1f}",
            fmt(st.decided_s),
            fmt(st.bake_s),
            fmt(st.total_s),
            f"{st.floor_s:g}",
            fmt(None if st.total_s is None else st.total_s / st.floor_s),
            fmt(st.update.p50),
            fmt(st.update.p95),
            fmt(st.update.max),
        )
        for st in g.stages
    ]
    stage_rows.append(
        (
            "all",
            g.devices,
            "",
            "",
            "",
            "",
            fmt(g.total_s),
            f"{g.floor_s:g}",
            fmt(g.ratio),
            "",
            "",
            "",
        )
    )
    a = render(
        (
            "stage",
            "devices",
            "cum.",
            "starts at s",
            "all decided s",
            "bake s",
            "stage s",
            "floor s",
            "x floor",
            "update p50",
            "p95",
            "max",
        ),
        stage_rows,
        title=(
            f"Good rollout, 1.0.0 -> 1.1.0 through {g.devices} devices: {g.state}. Floor per stage "
            f"= health window H {s.health_window:g} s + bake B {s.bake:g} s; update = a device's "
            "command -> decided in the service, seconds"
        ),
    )
    t = g.update["total"]
    b = render(
        ("figure", "measured s", "baseline s", "ratio", "over baseline s"),
        [
            (
                "rollout time vs floor",
                fmt(g.total_s),
                f"{g.floor_s:g}",
                fmt(g.ratio),
                fmt(g.overhead_s),
            ),
            *(
                (
                    f"per-device update {k} vs single device",
                    fmt(v),
                    fmt(solo.median_s),
                    fmt(g.vs_solo[k]),
                    fmt(None if v is None else v - solo.median_s),
                )
                for k, v in (("p50", t.p50), ("p95", t.p95), ("max", t.max))
            ),
        ],
        title=(
            f"Against the baselines (single device: median of {len(solo.update_s)} one-device "
            "deployments in this run, with the fleet running)"
        ),
    )
    c = render(
        ("phase", "single device", "rollout p50", "p95", "max", "devices"),
        [
            (
                name,
                fmt(solo.phases_median.get(name) if name != "total" else solo.median_s),
                fmt(sp.p50),
                fmt(sp.p95),
                fmt(sp.max),
                sp.n,
            )
            for name, sp in ((n, g.update[n]) for n in (*PHASES, "total"))
        ],
        title=(
            "Where a device's update time goes, seconds (deliver: command -> update-downloading; "
            "prepare: -> update-switching; switch: -> update-health; health: -> "
            "update-committed; report: -> decided in the service)"
        ),
    )
    return f"{a}\n\n{b}\n\n{c}"


def abort_table(r: Abort, s: Settings, interval: float) -> str:
    def ratios(v: float | None) -> tuple[str, str, str]:
        if v is None:
            return ("-", "-", "-")
        return (f"{v / interval:.2f}", f"{v / s.bake:.3f}", f"{v / s.timeout:.4f}")

    def span(values: Sequence[float]) -> str:
        if not values:
            return "-"
        lo, hi = min(values), max(values)
        return f"{lo:.2f}" if len(values) == 1 else f"{lo:.2f} .. {hi:.2f}"

    rows = [
        ("deploy -> canary update-failed (device)", span(r.canary_failed_s), "", "", ""),
        ("deploy -> canary decided (service)", span(r.canary_decided_s), "", "", ""),
        ("deploy -> aborting", fmt(r.aborting_s), *ratios(r.aborting_s)),
        ("deploy -> aborted", fmt(r.aborted_s), *ratios(r.aborted_s)),
        ("last canary failed -> aborting", fmt(r.abort_delay_s), *ratios(r.abort_delay_s)),
        (
            "first canary failed -> aborting",
            fmt(r.abort_delay_first_s),
            *ratios(r.abort_delay_first_s),
        ),
        (
            "aborting -> aborted",
            fmt(r.aborted_after_aborting_s),
            *ratios(r.aborted_after_aborting_s),
        ),
    ]
    a = render(
        ("interval", "seconds", "x rollout_interval", "x bake", "x timeout"),
        rows,
        title=(
            f"Failing canary, 1.0.0 -> 1.1.1 (fails the sample check) on {r.devices} devices, "
            f"stages {r.stage_sizes}: {r.state}. rollout_interval {interval:g} s, bake "
            f"{s.bake:g} s, timeout {s.timeout:g} s"
        ),
    )
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.counts.items()))
    lines = [
        f"reason: {r.reason}",
        f"canaries: {', '.join(r.canaries)} ({', '.join(r.canary_states)}): "
        f"{(r.canary_reasons or [''])[0]}",
        f"device states: {counts}; others that answered a command: "
        f"{', '.join(r.touched_others) or 'none'}",
        f"serving 1.0.0 after the abort: {r.on_old} of {r.devices}"
        + (f" (not: {r.not_on_old})" if r.not_on_old else ""),
    ]
    return a + "\n" + "\n".join(lines)


def load_table(solo: Solo, abort: Abort, good: Good, fleet_info: dict[str, Any]) -> str:
    def row(name: str, load: Load) -> tuple[object, ...]:
        st, lag = load.steps_ms, load.lag_ms
        return (
            name,
            st.n,
            fmt(st.p50),
            fmt(st.p95),
            fmt(st.max),
            fmt(load.slowest_step_cpu_ms),
            load.store_queue_max,
            fmt(lag.p50),
            fmt(lag.p95),
            fmt(lag.max),
        )

    a = render(
        (
            "phase",
            "rollout steps",
            "step p50 ms",
            "p95",
            "max",
            "CPU of max",
            "store queue max",
            "lag p50 ms",
            "p95",
            "max",
        ),
        [
            row("single device", solo.load),
            row("failing canary", abort.load),
            row("good rollout", good.load),
        ],
        title=(
            "The service and the process: rollout steps (Rollouts.tick, wall ms; CPU of max: the "
            "CPU time of the slowest step's thread), messages waiting to be stored, and the lag "
            f"of a probe thread (a {LAG_PROBE_SLEEP * 1000:g}-ms sleep's overrun, ms)"
        ),
    )
    f = fleet_info
    lines = [
        f"fleet: {f['devices']} devices up in {f['startup_s']:.1f} s (known online to the "
        f"service {f['known_s']:.1f} s later; {fmt(f['descriptors'])} descriptors open in this "
        f"process); {f['predictions']:,} predictions, "
        f"{f['errors']:,} errors{': ' + '; '.join(f['error_messages']) if f['errors'] else ''}, "
        f"{f['skipped']:,} skipped by the feeders (host behind); online at the end "
        f"{f['online']}/{f['devices']}",
        f"the service's devices table after the good rollout: {good.service_on_new} of "
        f"{good.devices} on 1.1.0",
    ]
    return a + "\n" + "\n".join(lines)


def versions() -> dict[str, str]:
    found = package_versions(("edgeops", "paho-mqtt", "sqlalchemy", "ai-edge-litert", "numpy"))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=10)
        found["mosquitto"] = out.stdout.splitlines()[0].split()[-1]
    return found


# --- main ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def fleets(
    s: Settings, p: Prepared, broker: str, service_url: str
) -> Iterator[tuple[Fleet, Fleet]]:
    def config(fleet: str, devices: int) -> FleetConfig:
        return FleetConfig(
            devices=devices,
            bundle=p.old,
            broker=broker,
            fleet=fleet,
            data=p.data,
            rate=s.rate,
            window_seconds=s.window_seconds,
            trusted_keys=(p.public_key,),
            command_keys=(p.command_public,),
            service_url=service_url,
            health_predictions=s.health_predictions,
            health_seconds=s.health_seconds,
            prefix=fleet,
        )

    say(f"starting {s.devices} simulated devices")
    with Fleet(config(FLEET, s.devices)) as big:
        say(f"  up in {big.startup_seconds:.1f} s; starting {s.solo_devices} solo devices")
        with Fleet(config(SOLO_FLEET, s.solo_devices)) as solo:
            yield big, solo


def run(s: Settings) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # The canaries' failures are the point of phase 2; their error lines are expected.
    logging.getLogger("device_agent").setLevel(logging.CRITICAL)
    work = s.out / "rollout"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    limits = raise_descriptor_limit(s.devices + s.solo_devices)
    p = prepare(work, s.epochs)
    interval = ServiceConfig().rollout_interval
    with Mosquitto() as broker:
        cfg = ServiceConfig(
            broker=f"mqtt://127.0.0.1:{broker.port}",
            db=f"sqlite:///{work / 'service.db'}",
            group=f"bench-{uuid.uuid4().hex[:6]}",
            http_port=0,
            trusted_keys=(p.public_key,),
            command_key=p.command_key,
        )
        with Service(cfg) as service:
            if not service.connected.wait(15):
                raise RuntimeError("the service did not connect to the broker")
            for bundle in (p.old, p.good, p.corrupt):
                service.register_bundle(bundle)
            fleet_ctx = fleets(s, p, cfg.broker, service.public_url())
            with Watch(service) as watch, fleet_ctx as (big, solo_fleet):
                t0 = time.monotonic()
                known = wait_known(service, watch, FLEET, s.devices, 120.0)
                wait_known(service, watch, SOLO_FLEET, s.solo_devices, 60.0)
                say(f"  the service knows every device {known:.1f} s after the start")
                startup = big.startup_seconds or 0.0
                descriptors = open_descriptors()
                solo = measure_solo(service, watch, solo_fleet, s, "1.1.0")
                say(f"  single device: median {solo.median_s:.2f} s of {solo.update_s}")
                abort = measure_abort(service, watch, big, s, "1.1.1")
                good = measure_good(service, watch, big, s, solo, "1.1.0")
                devices = big.stats()
                summary = big.summary(devices)
                fleet_info = {
                    "devices": s.devices,
                    "startup_s": startup,
                    "known_s": known,
                    "descriptors": descriptors,
                    "ran_s": time.monotonic() - t0,
                    "predictions": summary.predictions,
                    "errors": summary.errors,
                    "error_messages": sorted({d.last_error for d in devices if d.last_error}),
                    "skipped": summary.skipped,
                    "online": summary.online,
                }
                say("stopping the fleets")
    met = goals(good, abort, s, interval)

    print(good_tables(good, solo, s))
    print()
    print(abort_table(abort, s, interval))
    print()
    print(load_table(solo, abort, good, fleet_info))
    print()
    print(goal_lines(met))
    out = s.out / "rollout.json"
    write_json_atomic(
        out,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {
                **asdict(s),
                "out": str(s.out),
                "health_window": s.health_window,
                "policy": s.policy().to_dict(),
                "rollout_interval": interval,
            },
            "host": {"cpus": os.cpu_count(), "platform": sys.platform},
            "descriptor_limit": limits,
            "fleet": fleet_info,
            "single_device": asdict(solo),
            "failing_canary": asdict(abort),
            "good_rollout": asdict(good),
            "goals": [asdict(g) for g in met],
            "all_goals_pass": all(g.passed for g in met),
            "bundles": {"1.0.0": str(p.old), "1.1.0": str(p.good), "1.1.1": str(p.corrupt)},
            "versions": versions(),
            "seconds": elapsed(),
        },
    )
    say(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_mode_options(ap, "40 devices, 2-s bakes")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    run(Settings.of(mode_of(args), args.out.resolve()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
