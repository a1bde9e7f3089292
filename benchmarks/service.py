"""Service benchmark: how fast the intake stores a fleet's telemetry next to a bare MQTT
subscriber, how fast it drains a backlog, how long a window waits for its drift verdict, and
drift detection on real data.

Run::

    python benchmarks/service.py [--quick | --smoke] [--out benchmarks/results]

What it measures
----------------
Two models, each trained by ``edgeops.trainer.train`` (5 epochs), converted by
``converters.convert`` and packaged as a signed bundle that every service registers, so each
stored window is checked against its baseline and evaluated for drift, as in production:

* ``tabular``: scikit-learn's digits as a table of 64 numeric columns (``pixel_00`` ..
  ``pixel_63``), fp32 TFLite. Its windows carry 64 input features (11 bins each, moments) and the
  classifier's outputs, about 12 KB of JSON: a realistic fleet's telemetry. The intake phases use
  it.
* ``digits``: the digits CNN on 8x8 images, int8 TFLite with float I/O; the drift detection
  part uses it (below).

Windows. A real :class:`~device_agent.agent.Agent` (``mqtt=False, http=False``) serves 600
training rows per window (20 calls of 30) and closes windows with ``flush_window()``: real
``wire.Telemetry`` messages, copied (``msgspec.structs.replace``) into streams of distinct
messages from many device ids, in the order a fleet sends them (every device once per 10-s
window, the newest ending now), encoded by ``wire.encode``.

Phases, each on a fresh mosquitto (``edgeops.testing.Mosquitto``: 100,000 queued messages per
client) and a fresh database. Every consumer is a separate OS process (this script with
``--child``): a bare paho subscriber (MQTT 5, QoS 1, a plain subscription, counting only) and
the service process(es) (``Service(config, http=False, client_id=...)``, one drift evaluation
worker each):

* ``fleet`` (SQLite and PostgreSQL, one and two processes): ``devices`` ids (1,000) x
  ``windows_per_device``. Each consumer first connects with a persistent session and
  subscribes, then disconnects; the stream is published once (QoS 1, one paho client, all
  PUBACKs awaited), so the broker queues the same messages for every session; then the bare
  subscriber drains its queue alone, and after it the service process(es). A drain measures a
  consumer's capacity, free of the publisher's speed and of the other consumer's CPU. Stored/s
  is windows over the time from the first ``Intake.process`` start to the last one's end (two
  processes: of either; CLOCK_MONOTONIC, which the processes share on Linux); ``ratio`` is that
  over the bare subscriber's arrivals per second (goal: at least 0.7 with one process; the
  two-process scaling is reported).
* ``backlog`` (SQLite and PostgreSQL, one process): 20,100 windows from 300 devices queued
  while the service was away (goal: at least 2,000 stored/s, 20 x the ~100/s the intake managed
  when drift was evaluated inside the store loop).
* ``live`` (SQLite, one process): the service runs while the stream is published at a steady
  rate (``live_rate`` windows/s from all devices for ``live_seconds``): the lag from a window's
  arrival to the verdict that accounts for it, p50 and p95 (``Evaluator.lag``).

Each phase checks that the windows table holds every window exactly once (its unique key makes a
second copy impossible: duplicates are counted) and that every device was evaluated at its
newest window (evaluations are coalesced: a backlog makes fewer evaluations than windows). After
the drain the service runs until its evaluation queue is empty; that time is reported too.

Where the time goes. In this process, ``Service.handle_batch`` in batches of 100 (the intake and
then the queued evaluations, in this thread) on more messages of the same kind, SQLite and
PostgreSQL: once timed per stage (wrappers on the service's own objects; SQL statements, DBAPI
execution and commits counted by SQLAlchemy events), once under cProfile (own time grouped by
library, and the costliest functions).

Drift detection. The same ``Service.handle`` (SQLite, not started: no broker) and real agents on
the digits CNN, one device per stream, windows of 600 samples (20 calls of 30) drawn with
replacement:

* no drift, held-out: ``drift_windows`` windows from the digits test split, which neither the
  input baseline (training split) nor the output baseline (validation split) has seen. It has
  only 269 rows: every window is a resample of them, so their own difference from the baseline
  is in every window, while the noise floor allows for the window's and the baseline's sizes
  only. Its alerts are that pool's artefact, not a false-alarm rate: windows of independent
  draws need more rows than digits has, and ``benchmarks/drift.py`` measures that rate on larger
  real data sets;
* no drift, training: the same from the training split, the input baseline's own rows;
* drifted: held-out images + 3 and + 5 (clipped to 0..16) from window 10 on, 30 drifted
  windows, ``drift_repeats`` seeds each.

Reported: alerts raised per 1,000 windows and each feature's share of drifted verdicts; for
drifted streams the delay, the windows from the onset until the feature's alert is active.

How to read it
--------------
Rates and milliseconds are from one shared machine; ratios measured in the same run matter. The
goals are printed last with PASS or FAIL; the script exits 0 when a goal fails (it reports) and
non-zero only if something crashed. ``--smoke`` runs every part at a toy size (the tests run
it, so that the benchmark cannot rot). Results go to ``<out>/service.json``; bundles, databases
and the children's logs stay under ``<out>/service/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import contextlib
import cProfile
import itertools
import json
import logging
import pstats
import queue
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
import sqlalchemy as sa
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent.agent import Agent
from device_agent.config import (
    AgentConfig,
    DeviceConfig,
    ModelConfig,
    MqttConfig,
    TelemetryConfig,
)
from edgeops.core import topics, wire
from edgeops.core.broker import BrokerSettings
from edgeops.core.terminal import fmt, render
from edgeops.service import storage
from edgeops.service.config import DEFAULT_THRESHOLDS, ServiceConfig
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.testing import Mosquitto, Postgres, make_test_pki

FloatArray = npt.NDArray[np.float32]

FLEET = "bench"
GROUP = "bench-service"
RATIO_GOAL = 0.7
BACKLOG_GOAL = 2000.0
"""Windows stored per second draining a backlog: 20 x the ~100/s of the store loop that
evaluated drift inline."""
WINDOW_SECONDS = 10.0
"""The devices' window length in the synthetic stream (the agent's default)."""
AGENT_WINDOW_SECONDS = 3600.0
"""The benchmark's agents close windows with flush_window() only."""
PIXEL_MAX = 16.0
SUBACK_GRACE_SECONDS = 1.0
"""A service sets ``connected`` when it sends its SUBSCRIBE; this long later it holds the SUBACK."""
STALL_SECONDS = 60.0
"""A drain that stores nothing for this long has failed."""


@dataclass(frozen=True)
class Phase:
    name: str
    kind: str
    """fleet (against the bare subscriber), backlog, or live."""
    database: str
    processes: int
    tls: bool = False
    """Every consumer and the publisher over TLS with a password (mosquitto with a throwaway
    CA), instead of plain MQTT."""

    @property
    def slug(self) -> str:
        return f"{self.kind}_{self.database}_{self.processes}" + ("_tls" if self.tls else "")


FLEET_PHASES = (
    Phase("sqlite", "fleet", "sqlite", 1),
    Phase("sqlite tls", "fleet", "sqlite", 1, tls=True),
    Phase("sqlite x2", "fleet", "sqlite", 2),
    Phase("postgresql", "fleet", "postgresql", 1),
    Phase("postgresql x2", "fleet", "postgresql", 2),
)
BACKLOG_PHASES = (
    Phase("backlog sqlite", "backlog", "sqlite", 1),
    Phase("backlog postgresql", "backlog", "postgresql", 1),
)
LIVE_PHASES = (Phase("live sqlite", "live", "sqlite", 1),)


@dataclass(frozen=True)
class Settings:
    mode: str
    """full, quick or smoke."""
    out: Path
    devices: int
    windows_per_device: int
    backlog_devices: int
    backlog_windows: int
    live_rate: float
    live_seconds: float
    phases: tuple[Phase, ...]
    drift_windows: int
    """Windows of the no-drift stream."""
    drift_repeats: int
    """Drifted streams per shift (seeds)."""
    base_windows: int = 24
    """Real windows the streams are copied from."""
    window_samples: int = 600
    drift_batch: int = 30
    """Samples per agent.predict call (all streams)."""
    drift_onset: int = 10
    drift_after: int = 30
    """Drifted windows per drifted stream: an alert later than this is not detected."""
    shifts: tuple[float, ...] = (3.0, 5.0)
    profile_warmup: int = 200
    profile_windows: int = 1000
    epochs: int = 5
    intake_only: bool = False
    """The intake phases only (``--phases``): no breakdown, no drift part."""

    @classmethod
    def of(cls, mode: str, out: Path) -> Settings:
        everything = FLEET_PHASES + BACKLOG_PHASES + LIVE_PHASES
        if mode == "smoke":
            return cls(
                mode,
                out,
                devices=20,
                windows_per_device=3,
                backlog_devices=10,
                backlog_windows=60,
                live_rate=20.0,
                live_seconds=2.0,
                phases=(FLEET_PHASES[0], BACKLOG_PHASES[0], LIVE_PHASES[0]),
                drift_windows=12,
                drift_repeats=1,
                base_windows=3,
                drift_onset=4,
                drift_after=4,
                shifts=(5.0,),
                profile_warmup=20,
                profile_windows=40,
                epochs=1,
            )
        if mode == "quick":
            return cls(
                mode,
                out,
                devices=300,
                windows_per_device=5,
                backlog_devices=100,
                backlog_windows=5000,
                live_rate=200.0,
                live_seconds=10.0,
                phases=everything,
                drift_windows=300,
                drift_repeats=3,
            )
        return cls(
            mode,
            out,
            devices=1000,
            windows_per_device=10,
            backlog_devices=300,
            backlog_windows=20_100,
            live_rate=400.0,
            live_seconds=20.0,
            phases=everything,
            drift_windows=1000,
            drift_repeats=10,
        )


@dataclass(frozen=True)
class Model:
    bundle: Path
    public_key: Path
    training: FloatArray
    """The training split: the rows the input baseline was profiled on."""
    held_out: FloatArray
    """The test split."""
    columns: tuple[str, ...] = ()
    """A tabular model's input columns (empty for an image model)."""


@dataclass(frozen=True)
class Prepared:
    digits: Model
    """The digits CNN (images): the drift part."""
    tabular: Model
    """Digits as 64 numeric columns: the intake phases."""


Stream = list[tuple[str, bytes]]


# --- models, bundles, messages ------------------------------------------------------------------


def digits_csv(path: Path) -> Path:
    """scikit-learn's digits as a table: 64 numeric pixel columns and the ``digit``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    names = [f"pixel_{i:02d}" for i in range(64)]
    lines = [",".join([*names, "digit"])]
    lines += [
        ",".join([*(f"{v:g}" for v in row), f"d{y}"])
        for row, y in zip(d.data, d.target, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare(work: Path, s: Settings) -> Prepared:
    """Train both runs, convert them to TFLite, package signed bundles."""
    from converters import ConversionConfig, Format, Mode, convert
    from edgeops.core.signing import generate_keypair, load_signing_key
    from edgeops.packaging.package import PackageConfig, package
    from edgeops.trainer import samples
    from edgeops.trainer.config import TrainConfig
    from edgeops.trainer.run import train

    private, public = generate_keypair(work / "keys", "fleet")
    key = load_signing_key(private)

    def build(name: str, data: Path, target: str, mode: Mode) -> tuple[Any, Path]:
        say(f"{name}: training the run")
        run = train(
            data,
            work / f"{name}-run",
            TrainConfig(target=target, epochs=s.epochs),
            require_blessing=False,
        )
        say(f"{name}: converting to TFLite {mode.value}, packaging a signed bundle")
        cfg = ConversionConfig(
            to=Format.TFLITE,
            mode=mode,
            calibration=run.split("train"),
            latency_runs=3,
            name=name,
        )
        report = convert(run.model, work / f"{name}-models", cfg)
        bundle = package(
            run,
            work / f"{name}-models" / report.artifact["file"],
            work / f"{name}-bundles",
            PackageConfig("1.0.0"),
            key=key,
        )
        return run, bundle

    run, bundle = build("digits", samples.digits_npz(work / "digits.npz"), "label", Mode.INT8)
    with np.load(run.split("test")) as test, np.load(run.split("train")) as training:
        digits = Model(
            bundle,
            public,
            np.asarray(training["x"], dtype=np.float32),
            np.asarray(test["x"], dtype=np.float32),
        )
    run, bundle = build("tabular", digits_csv(work / "digits.csv"), "digit", Mode.FP32)
    columns = tuple(f"pixel_{i:02d}" for i in range(64))
    from sklearn.datasets import load_digits

    table = load_digits().data.astype(np.float32)
    return Prepared(digits, Model(bundle, public, table, table, columns))


def agent_config(root: Path, m: Model, device: str) -> AgentConfig:
    return AgentConfig(
        device=DeviceConfig(id=device, fleet=FLEET),
        model=ModelConfig(
            store=root / "store", bundle=m.bundle, trusted_keys=(m.public_key,), threads=1
        ),
        telemetry=TelemetryConfig(window_seconds=AGENT_WINDOW_SECONDS),
        mqtt=MqttConfig(outbox=root / "outbox.db"),
    )


def real_windows(m: Model, root: Path, s: Settings) -> list[wire.Telemetry]:
    """Windows of a real agent serving training rows: a healthy fleet, whose windows raise no
    alerts."""
    rng = np.random.default_rng(0)
    found = []
    with Agent(agent_config(root, m, "base"), mqtt=False, http=False) as agent:
        for _ in range(s.base_windows):
            rows = m.training[rng.integers(0, len(m.training), s.window_samples)]
            for i in range(0, len(rows), s.drift_batch):
                batch = rows[i : i + s.drift_batch]
                if m.columns:
                    agent.predict({c: batch[:, j] for j, c in enumerate(m.columns)})
                else:
                    agent.predict(batch)
            window = agent.flush_window()
            assert window is not None and window.count == s.window_samples
            found.append(window)
    return found


def make_stream(bases: Sequence[wire.Telemetry], devices: int, rounds: int, tag: str) -> Stream:
    """``devices * rounds`` distinct telemetry messages in the order a fleet sends them: every
    device once per window length, the newest windows ending now."""
    names = [f"{tag}-{d:04d}" for d in range(devices)]
    boots = [uuid.uuid4().hex[:16] for _ in range(devices)]
    now = time.time()
    stream = []
    for k in range(rounds):
        for d in range(devices):
            end = now - (rounds - 1 - k) * WINDOW_SECONDS - (devices - d) * WINDOW_SECONDS / devices
            t = msgspec.structs.replace(
                bases[(k * devices + d) % len(bases)],
                device=names[d],
                boot=boots[d],
                seq=k + 1,
                sent=end + 0.01,
                window_start=end - WINDOW_SECONDS,
                window_end=end,
            )
            stream.append((topics.telemetry(FLEET, names[d]), wire.encode(t)))
    return stream


# --- child processes ----------------------------------------------------------------------------


def broker_settings(spec: dict[str, Any]) -> BrokerSettings:
    """The phase's broker: plain, or TLS with a CA and a password (``spec["tls"]``)."""
    tls = spec.get("tls")
    if not tls:
        return BrokerSettings(f"mqtt://127.0.0.1:{spec['port']}")
    return BrokerSettings(
        f"mqtts://127.0.0.1:{spec['port']}",
        username=tls["username"],
        password=tls["password"],
        ca=Path(tls["ca"]),
    )


def persistent_connect(c: mqtt.Client, spec: dict[str, Any]) -> None:
    settings = broker_settings(spec)
    settings.configure(c)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    host, port = settings.address
    c.connect(host, port, keepalive=30, clean_start=False, properties=props)


def reply(**values: Any) -> None:
    print(json.dumps(values), flush=True)


def await_word(word: str) -> None:
    line = sys.stdin.readline().strip()
    if line != word:
        raise SystemExit(f"expected {word!r} on stdin, got {line!r}")


@dataclass
class Stamps:
    """First start and last end of a series of events (CLOCK_MONOTONIC)."""

    n: int = 0
    first: float | None = None
    last: float | None = None

    def add(self, start: float, end: float) -> None:
        if self.first is None:
            self.first = start
        self.last = end
        self.n += 1


def child_bare(spec: dict[str, Any]) -> None:
    """Prime a persistent session subscribed to every device's telemetry; on ``go`` drain it,
    counting arrivals, until ``expected`` messages or the timeout."""

    def client(on_connect: Callable[..., None]) -> mqtt.Client:
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=spec["client_id"], protocol=mqtt.MQTTv5
        )
        c.on_connect = on_connect
        return c

    subscribed = threading.Event()
    c = client(lambda cl, *_: cl.subscribe(spec["filter"], qos=1))
    c.on_subscribe = lambda *_: subscribed.set()
    persistent_connect(c, spec)
    c.loop_start()
    if not subscribed.wait(10):
        raise SystemExit("the bare subscriber got no SUBACK")
    c.disconnect()
    c.loop_stop()
    reply(event="primed")

    await_word("go")
    got, done = Stamps(), threading.Event()

    def on_message(cl: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        got.add(now, now)
        if got.n >= spec["expected"]:
            done.set()

    c = client(lambda *_: None)  # the session keeps the subscription
    c.on_message = on_message
    cpu = time.process_time()
    persistent_connect(c, spec)
    c.loop_start()
    done.wait(spec["timeout"])
    cpu = time.process_time() - cpu
    c.disconnect()
    c.loop_stop()
    reply(event="done", count=got.n, first=got.first, last=got.last, cpu=cpu)


def child_service(spec: dict[str, Any]) -> None:
    """Prime the service's persistent session; on ``go`` run a Service on it until ``stop``,
    timing every batch the intake processes; then run until its evaluations are done."""
    cfg = ServiceConfig(
        broker=broker_settings(spec),
        db=spec["db"],
        group=spec["group"],
        bundles=(Path(spec["bundle"]),),
        trusted_keys=(Path(spec["key"]),),
    )
    with Service(cfg, http=False, client_id=spec["client_id"]) as svc:
        if not svc.connected.wait(10):
            raise SystemExit("the service did not connect")
        time.sleep(SUBACK_GRACE_SECONDS)
    reply(event="primed")

    await_word("go")
    svc = Service(cfg, http=False, client_id=spec["client_id"])
    stamps = Stamps()
    process = svc.intake.process

    def timed(batch: Any) -> Any:
        start = time.monotonic()
        try:
            return process(batch)
        finally:
            stamps.add(start, time.monotonic())

    svc.intake.process = timed  # type: ignore[method-assign]
    evaluating = [0.0]
    run_one = svc.evaluator.run_one

    def counted(timeout: float) -> bool:
        start = time.thread_time()
        try:
            return run_one(timeout)
        finally:
            evaluating[0] += time.thread_time() - start

    svc.evaluator.run_one = counted  # type: ignore[method-assign]
    cpu = time.process_time()
    with svc:
        reply(event="started")
        await_word("stop")
        stored_cpu = time.process_time() - cpu
        stored_eval = evaluating[0]
        deadline = time.monotonic() + 600
        while not svc.evaluations.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        evaluated = time.monotonic()
        reply(
            event="done",
            handled=stamps.n,
            first=stamps.first,
            last=stamps.last,
            evaluated=evaluated,
            intake_cpu=stored_cpu - stored_eval,
            evaluation_cpu=evaluating[0],
            counters=svc.stats(),
        )


class Child:
    """This script run with ``--child``: one word per line on stdin, one JSON reply per line on
    stdout, its stderr in ``log``."""

    def __init__(self, role: str, spec: dict[str, Any], log: Path) -> None:
        self.role = role
        self.log_path = log
        self._log: IO[str] = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put("")

    def send(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.role}: no {event!r} within {timeout:.0f} s") from None
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"{self.role} exited ({code}); see {self.log_path}")
        found: dict[str, Any] = json.loads(line)
        if found.get("event") != event:
            raise RuntimeError(f"{self.role}: expected {event!r}, got {found}")
        return found

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


# --- the intake phases --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessResult:
    stored: int
    per_s: float
    duplicates: int
    evaluation_errors: int
    received: int
    rejected: int
    evaluations: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    intake_cpu_ms: float
    """CPU per stored window, every thread but the evaluations' (paho's included)."""
    evaluation_cpu_ms: float
    """CPU per evaluation."""


@dataclass(frozen=True)
class PhaseResult:
    phase: str
    kind: str
    database: str
    processes: int
    windows: int
    devices: int
    payload_bytes_mean: float
    publish_per_s: float
    bare_received: int | None
    bare_per_s: float | None
    stored_per_s: float
    """All processes together: windows over the first batch start to the last batch end."""
    ratio: float | None
    """stored_per_s / bare_per_s (fleet phases)."""
    bare_cpu_ms: float | None
    """The bare subscriber's CPU per message."""
    drain_seconds: float
    evaluated_seconds: float
    """From the first batch until every evaluation was done."""
    per_process: tuple[ProcessResult, ...]
    windows_in_db: int
    evaluations_in_db: int
    """Device-scope ``dataset`` drift rows: one per evaluation (coalesced)."""
    devices_in_db: int
    devices_evaluated: int
    """Devices whose newest window was evaluated (a ``dataset`` row after its last window)."""
    alerts_in_db: int

    @property
    def exactly_once(self) -> bool:
        stored = sum(p.stored for p in self.per_process)
        return self.windows_in_db == self.windows == stored and not any(
            p.duplicates for p in self.per_process
        )

    @property
    def lag_p95_s(self) -> float | None:
        found = [p.lag_p95_s for p in self.per_process if p.lag_p95_s is not None]
        return max(found) if found else None

    @property
    def lag_p50_s(self) -> float | None:
        found = [p.lag_p50_s for p in self.per_process if p.lag_p50_s is not None]
        return max(found) if found else None


def newest_evaluated(engine: sa.Engine) -> tuple[int, int]:
    """Devices with windows, and how many of them had their newest window evaluated: a device's
    newest evaluation counts the samples of a span ending at its last window, so it is at least
    as recent as that window's arrival."""
    w, d = schema.windows.c, schema.drift.c
    with engine.connect() as conn:
        last_window = dict(
            conn.execute(sa.select(w.device, sa.func.max(w.received)).group_by(w.device)).all()
        )
        last_eval = dict(
            conn.execute(
                sa.select(d.device, sa.func.max(d.evaluated))
                .where(d.scope == "device", d.kind == "dataset")
                .group_by(d.device)
            ).all()
        )
    done = sum(1 for dev, t in last_window.items() if last_eval.get(dev, -1.0) >= t)
    return len(last_window), done


def count_rows(engine: sa.Engine, table: sa.Table, *where: Any) -> int:
    with engine.connect() as conn:
        q = sa.select(sa.func.count()).select_from(table).where(*where)
        return int(conn.execute(q).scalar_one())


def pg_database(pg: Postgres, name: str) -> str:
    import psycopg

    with psycopg.connect(pg.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg.url.rsplit("/", 1)[0] + "/" + name


def publish(broker: BrokerSettings, stream: Stream, rate: float | None = None) -> float:
    """Publish the stream at QoS 1 (paced at ``rate`` messages/s if given); messages per second
    until the last PUBACK."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher", protocol=mqtt.MQTTv5)
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.max_inflight_messages_set(1000)
    broker.configure(c)
    c.connect(*broker.address)
    c.loop_start()
    if not connected.wait(10):
        raise RuntimeError("the publisher could not connect")
    start = time.monotonic()
    infos = []
    for i, (topic, payload) in enumerate(stream):
        if rate is not None:
            due = start + i / rate
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
        infos.append(c.publish(topic, payload, qos=1))
    for info in infos:
        info.wait_for_publish(timeout=120)
    seconds = time.monotonic() - start
    c.disconnect()
    c.loop_stop()
    if not all(i.is_published() for i in infos):
        raise RuntimeError("the broker did not acknowledge every message")
    return len(stream) / seconds


def wait_stored(engine: sa.Engine, n: int) -> None:
    """Until the windows table holds ``n`` rows, or nothing was stored for STALL_SECONDS."""
    last, changed = -1, time.monotonic()
    while True:
        found = count_rows(engine, schema.windows)
        if found >= n:
            return
        if found != last:
            last, changed = found, time.monotonic()
        elif time.monotonic() - changed > STALL_SECONDS:
            say(f"  stalled at {found} of {n} windows")
            return
        time.sleep(0.25)


def run_phase(
    phase: Phase, stream: Stream, m: Model, pg: Postgres | None, s: Settings
) -> PhaseResult:
    work = s.out / "service" / phase.slug
    work.mkdir(parents=True)
    if phase.database == "sqlite":
        url = f"sqlite:///{work / 'service.db'}"
    else:
        assert pg is not None
        url = pg_database(pg, f"bench_{phase.slug}")
    engine = storage.connect(url)  # creates the tables once, before the services start
    n = len(stream)
    tls: dict[str, str] | None = None
    if phase.tls:
        pki = make_test_pki(work / "pki")
        tls = {"username": "bench", "password": uuid.uuid4().hex, "ca": str(pki.ca)}
        broker_cm = Mosquitto(tls=pki, passwords={tls["username"]: tls["password"]})
    else:
        broker_cm = Mosquitto()
    with broker_cm as broker, contextlib.ExitStack() as stack:
        common = {"port": broker.port, "timeout": max(60.0, n / 100), "tls": tls}
        bare = (
            stack.enter_context(
                Child(
                    "bare subscriber",
                    {
                        **common,
                        "role": "bare",
                        "client_id": "bench-bare",
                        "filter": topics.device_filter(FLEET, kind="telemetry"),
                        "expected": n,
                    },
                    work / "bare.log",
                )
            )
            if phase.kind == "fleet"
            else None
        )
        services = [
            stack.enter_context(
                Child(
                    f"service {i}",
                    {
                        **common,
                        "role": "service",
                        "client_id": f"bench-service-{i}",
                        "db": url,
                        "group": GROUP,
                        "bundle": str(m.bundle),
                        "key": str(m.public_key),
                    },
                    work / f"service-{i}.log",
                )
            )
            for i in range(phase.processes)
        ]
        for c in (*([bare] if bare else []), *services):
            c.expect("primed", 120)
        b: dict[str, Any] | None = None
        if phase.kind == "live":
            for c in services:
                c.send("go")
            for c in services:
                c.expect("started", 120)
            say(f"{phase.name}: publishing {n} windows at {s.live_rate:g}/s to a running service")
            publish_rate = publish(broker_settings(common), stream, rate=s.live_rate)
        else:
            say(f"{phase.name}: publishing {n} windows")
            publish_rate = publish(broker_settings(common), stream)
            if bare is not None:
                say(f"{phase.name}: the bare subscriber drains")
                bare.send("go")
                b = bare.expect("done", common["timeout"] + 30)
            say(f"{phase.name}: {phase.processes} service process(es) drain")
            for c in services:
                c.send("go")
            for c in services:
                c.expect("started", 120)
        wait_stored(engine, n)
        time.sleep(0.5)
        for c in services:
            c.send("stop")
        reports = [c.expect("done", 700) for c in services]
    in_db = count_rows(engine, schema.windows)
    evaluations = count_rows(
        engine, schema.drift, schema.drift.c.scope == "device", schema.drift.c.kind == "dataset"
    )
    alerts = count_rows(engine, schema.alerts)
    devices_in_db, devices_evaluated = newest_evaluated(engine)
    engine.dispose()
    started = [r["first"] for r in reports if r["first"] is not None]
    ended = [r["last"] for r in reports if r["last"] is not None]
    stored = sum(r["counters"]["stored_windows"] for r in reports)
    drain = max(ended) - min(started) if started else float("nan")
    bare_rate = None
    if b is not None and b["count"] > 1:
        bare_rate = b["count"] / (b["last"] - b["first"])
    combined = stored / drain
    return PhaseResult(
        phase=phase.name,
        kind=phase.kind,
        database=phase.database,
        processes=phase.processes,
        windows=n,
        devices=len({t for t, _ in stream}),
        payload_bytes_mean=statistics.fmean(len(payload) for _, payload in stream),
        publish_per_s=publish_rate,
        bare_received=None if b is None else b["count"],
        bare_per_s=bare_rate,
        stored_per_s=combined,
        ratio=None if bare_rate is None else combined / bare_rate,
        bare_cpu_ms=None if b is None else b["cpu"] / max(b["count"], 1) * 1000,
        drain_seconds=drain,
        evaluated_seconds=max(r["evaluated"] for r in reports) - min(started)
        if started
        else float("nan"),
        per_process=tuple(
            ProcessResult(
                stored=r["counters"]["stored_windows"],
                per_s=r["counters"]["stored_windows"] / (r["last"] - r["first"])
                if r["first"] is not None and r["last"] > r["first"]
                else 0.0,
                duplicates=r["counters"]["duplicates"],
                evaluation_errors=r["counters"]["evaluation_errors"],
                received=r["counters"]["received"],
                rejected=r["counters"]["rejected_total"],
                evaluations=r["counters"]["evaluation"]["evaluations"],
                lag_p50_s=r["counters"]["evaluation"]["lag_p50_s"],
                lag_p95_s=r["counters"]["evaluation"]["lag_p95_s"],
                intake_cpu_ms=r["intake_cpu"] / max(r["counters"]["stored_windows"], 1) * 1000,
                evaluation_cpu_ms=r["evaluation_cpu"]
                / max(r["counters"]["evaluation"]["evaluations"], 1)
                * 1000,
            )
            for r in reports
        ),
        windows_in_db=in_db,
        evaluations_in_db=evaluations,
        devices_in_db=devices_in_db,
        devices_evaluated=devices_evaluated,
        alerts_in_db=alerts,
    )


# --- where the time goes ------------------------------------------------------------------------


class Stages:
    """Wall time per labelled method, wrapped on the instance (the class is left alone)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._wrapped: list[tuple[object, str]] = []

    def wrap(self, obj: object, name: str, label: str) -> None:
        fn = getattr(obj, name)
        self._wrapped.append((obj, name))
        clock = time.perf_counter

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += clock() - start
                self.calls[label] += 1

        setattr(obj, name, timed)

    def unwrap(self) -> None:
        """The class's methods again."""
        for obj, name in self._wrapped:
            delattr(obj, name)
        self._wrapped.clear()


class SqlMeter:
    """Statements, DBAPI execution time, transactions and commit time of one engine."""

    def __init__(self, engine: sa.Engine) -> None:
        self.statements = 0
        self.execute_seconds = 0.0
        self.commits = 0
        self.commit_seconds = 0.0
        self._started = 0.0
        self._committing: float | None = None
        self._listeners: list[tuple[Any, str, Callable[..., None]]] = [
            (engine, "before_cursor_execute", self._before),
            (engine, "after_cursor_execute", self._after),
            (engine, "commit", self._commit),
            (engine.pool, "checkin", self._checkin),
        ]
        for target, name, fn in self._listeners:
            sa.event.listen(target, name, fn)

    def detach(self) -> None:
        for target, name, fn in self._listeners:
            sa.event.remove(target, name, fn)

    def _before(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _after(self, *_: Any) -> None:
        self.execute_seconds += time.perf_counter() - self._started
        self.statements += 1

    def _commit(self, *_: Any) -> None:
        self.commits += 1
        self._committing = time.perf_counter()

    def _checkin(self, *_: Any) -> None:
        """The connection goes back to the pool right after its commit (and a reset)."""
        if self._committing is not None:
            self.commit_seconds += time.perf_counter() - self._committing
            self._committing = None


STAGES = (
    ("check", "check: decode and validate, topic, clocks, baseline fit"),
    ("store", "store: one INSERT per table for the batch, device upsert, commit"),
    ("span", "read span: SELECT the span's windows not in memory, decode"),
    ("maths", "drift maths: merge windows, distances, verdicts"),
    ("_store_and_step", "store drift rows + alert hysteresis"),
    ("other", "rest: limits, queueing, counters"),
)
PROFILE_BATCH = 100
"""Messages per handle_batch in the breakdown."""


@dataclass(frozen=True)
class Breakdown:
    database: str
    windows: int
    per_s: float
    """handle_batch() alone, in this process, timed per stage (no MQTT)."""
    stage_ms: dict[str, float]
    statements_per_window: float
    transactions_per_window: float
    dbapi_execute_ms: float
    commit_ms: float
    profile_per_s: float
    """Under cProfile."""
    by_library: dict[str, float]
    """cProfile own time per window (us), grouped."""
    top: list[dict[str, Any]] = field(default_factory=list)


def library(file: str, func: str) -> str:
    """Where a cProfile row belongs: a package, the standard library, or a C built-in's owner."""
    if file == "~":
        for key in ("sqlite3", "psycopg", "msgspec", "numpy"):
            if key in func:
                return key
        return "builtins"
    for key in ("sqlalchemy", "psycopg", "numpy", "msgspec", "paho"):
        if key in file:
            return key
    if "/edgeops/" in file:
        return "edgeops"
    return "stdlib" if "/lib/python3" in file or file.startswith("<frozen") else "other"


def new_service(url: str, m: Model) -> Service:
    """A service that is not started (no broker): handle() is called directly."""
    cfg = ServiceConfig(
        db=url, bundles=(m.bundle,), trusted_keys=(m.public_key,), fleet_interval=3600.0
    )
    svc = Service(cfg, http=False)
    svc.register_bundle(m.bundle)
    return svc


def _batches(stream: Stream) -> list[Stream]:
    return [stream[i : i + PROFILE_BATCH] for i in range(0, len(stream), PROFILE_BATCH)]


def breakdown(name: str, url: str, stream: Stream, m: Model, s: Settings) -> Breakdown:
    """Stage timings, then cProfile, of ``Service.handle_batch`` over two runs of the stream's
    tail."""
    warm, n = s.profile_warmup, s.profile_windows
    assert len(stream) >= warm + 2 * n
    svc = new_service(url, m)
    try:
        for batch in _batches(stream[:warm]):
            svc.handle_batch(batch)
        stages = Stages()
        stages.wrap(svc, "handle_batch", "handle")
        stages.wrap(svc.intake, "_check", "check")
        stages.wrap(svc.store.telemetry, "add_batch", "store")
        stages.wrap(svc.store.telemetry, "device_span", "span")
        stages.wrap(svc.engine, "_evaluate", "_evaluate")
        stages.wrap(svc.engine, "_store_and_step", "_store_and_step")
        sql = SqlMeter(svc.engine_db)
        start = time.perf_counter()
        for batch in _batches(stream[warm : warm + n]):
            svc.handle_batch(batch)
        seconds = time.perf_counter() - start
        sql.detach()
        stages.unwrap()
        sec = stages.seconds
        parts = {
            "check": sec["check"],
            "store": sec["store"],
            "span": sec["span"],
            "maths": sec["_evaluate"] - sec["_store_and_step"],
            "_store_and_step": sec["_store_and_step"],
        }
        parts["other"] = sec["handle"] - sum(parts.values())
        stage_ms = {k: v / n * 1000 for k, v in parts.items()} | {"total": sec["handle"] / n * 1000}
        assert stages.calls["check"] == n

        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.enable()
        for batch in _batches(stream[warm + n : warm + 2 * n]):
            svc.handle_batch(batch)
        prof.disable()
        profiled = time.perf_counter() - start
        stored = svc.counters.stored_windows
        assert stored == warm + 2 * n, f"{stored} stored"
    finally:
        svc.engine_db.dispose()
    own: dict[str, float] = defaultdict(float)
    rows = []
    for (file, line, func), (_, ncalls, tottime, cumtime, _) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        own[library(file, func)] += tottime / n * 1e6
        where = func if file == "~" else f"{Path(file).parent.name}/{Path(file).name}:{line} {func}"
        rows.append(
            {
                "function": where,
                "calls_per_window": ncalls / n,
                "own_us": tottime / n * 1e6,
                "cumulative_us": cumtime / n * 1e6,
            }
        )
    rows.sort(key=lambda r: -r["own_us"])
    return Breakdown(
        database=name,
        windows=n,
        per_s=n / seconds,
        stage_ms=stage_ms,
        statements_per_window=sql.statements / n,
        transactions_per_window=sql.commits / n,
        dbapi_execute_ms=sql.execute_seconds / n * 1000,
        commit_ms=sql.commit_seconds / n * 1000,
        profile_per_s=n / profiled,
        by_library=dict(sorted(own.items(), key=lambda kv: -kv[1])),
        top=rows[:40],
    )


# --- drift detection ----------------------------------------------------------------------------


HELD_OUT, TRAINING = "held-out", "training"


@dataclass(frozen=True)
class StreamSpec:
    """One device's stream: ``windows`` windows of rows of ``source``, from ``onset`` on
    shifted by ``shift``."""

    source: str
    windows: int
    seed: int
    onset: int | None = None
    shift: float = 0.0

    @property
    def device(self) -> str:
        return f"{self.source}-{self.seed}-{self.shift:g}"


@dataclass(frozen=True)
class StreamRun:
    """One device's stream through Service.handle: verdicts and alerts per window."""

    spec: StreamSpec
    features: tuple[str, ...]
    """``kind feature``: ``input image:mean[c0]``, ``output class``, ``dataset *``."""
    drifted: dict[str, list[bool | None]]
    js: dict[str, list[float | None]]
    active: list[frozenset[str]]
    """The features whose alert is active after each window."""

    @property
    def raised(self) -> list[tuple[int, str]]:
        """(window index, feature) of every alert raised."""
        before: frozenset[str] = frozenset()
        found = []
        for w, now in enumerate(self.active):
            found += [(w, f) for f in sorted(now - before)]
            before = now
        return found


def drift_stream(p: Model, spec: StreamSpec, work: Path, s: Settings) -> StreamRun:
    """Serve the stream with a real agent, hand each window to a service, read back verdicts."""
    device, onset = spec.device, spec.onset
    root = work / device
    root.mkdir(parents=True)
    svc = new_service(f"sqlite:///{root / 'service.db'}", p)
    rows = p.held_out if spec.source == HELD_OUT else p.training
    rng = np.random.default_rng(spec.seed)
    topic = topics.telemetry(FLEET, device)
    active: list[frozenset[str]] = []
    try:
        with Agent(agent_config(root, p, device), mqtt=False, http=False) as agent:
            for w in range(spec.windows):
                x = rows[rng.integers(0, len(rows), s.window_samples)]
                if onset is not None and w >= onset:
                    x = np.clip(x + spec.shift, 0.0, PIXEL_MAX)
                for i in range(0, len(x), s.drift_batch):
                    agent.predict(x[i : i + s.drift_batch])
                t = agent.flush_window()
                assert t is not None
                svc.handle(topic, wire.encode(t))
                alerts = svc.store.alerts.active(device=device)
                active.append(frozenset(_key(a) for a in alerts))
        found = list(reversed(svc.store.drift.rows(device=device, latest=False)))
    finally:
        svc.stop()
    evaluations = [list(g) for _, g in itertools.groupby(found, key=lambda r: r["evaluated"])]
    assert len(evaluations) == spec.windows, f"{len(evaluations)} evaluations of {spec.windows}"
    # verdicts since deploy begin once the device's reference is ready (its first windows)
    features = tuple(dict.fromkeys(_key(r) for ev in evaluations for r in ev))
    drifted: dict[str, list[bool | None]] = {f: [] for f in features}
    js: dict[str, list[float | None]] = {f: [] for f in features}
    for ev in evaluations:
        by = {_key(r): r for r in ev}
        for f in features:
            drifted[f].append(by[f]["drifted"] if f in by else None)
            js[f].append(by[f]["js"] if f in by else None)
    return StreamRun(spec, features, drifted, js, active)


def _key(row: dict[str, Any]) -> str:
    """``kind feature``, and `` (since deploy)`` for a verdict against the device's reference."""
    since = " (since deploy)" if row.get("reference") == "deploy" else ""
    return f"{row['kind']} {row['feature']}{since}"


@dataclass(frozen=True)
class CalmRow:
    source: str
    feature: str
    windows: int
    drifted_share: float | None
    js_median: float | None
    js_p99: float | None
    alerts: int
    per_1000: float


@dataclass(frozen=True)
class DelayRow:
    shift: float
    feature: str
    repeats: int
    detected: int
    delay_median: float | None
    delay_min: int | None
    delay_max: int | None
    drifted_share: float | None
    """Share of drifted verdicts in the windows after the onset."""
    alerts_before_onset: int
    """Alerts raised before the onset (false alarms), in all repeats."""
    active_at_onset: int
    """Repeats whose alert was already active before the onset's window was handled."""


def share(values: Sequence[bool | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def calm_rows(run: StreamRun) -> list[CalmRow]:
    found = []
    for f in (*run.features, "any"):
        n_alerts = sum(1 for _, a in run.raised if f in ("any", a))
        values = [j for j in run.js[f] if j is not None] if f != "any" else []
        found.append(
            CalmRow(
                source=run.spec.source,
                feature=f,
                windows=run.spec.windows,
                drifted_share=share(run.drifted[f]) if f != "any" else None,
                js_median=statistics.median(values) if values else None,
                js_p99=float(np.percentile(values, 99)) if values else None,
                alerts=n_alerts,
                per_1000=n_alerts / run.spec.windows * 1000,
            )
        )
    return found


def delay_rows(runs: Sequence[StreamRun]) -> list[DelayRow]:
    found = []
    for f in (*runs[0].features, "any"):
        delays, shares, early, carried = [], [], 0, 0
        for r in runs:
            onset = r.spec.onset
            assert onset is not None
            early += sum(1 for w, a in r.raised if w < onset and f in ("any", a))
            on = [bool(a) if f == "any" else f in a for a in r.active]
            carried += on[onset - 1]
            after = [w for w in range(onset, len(on)) if on[w]]
            if after:
                delays.append(after[0] - onset + 1)
            if f != "any":
                s = share(r.drifted[f][onset:])
                if s is not None:
                    shares.append(s)
        found.append(
            DelayRow(
                shift=runs[0].spec.shift,
                feature=f,
                repeats=len(runs),
                detected=len(delays),
                delay_median=statistics.median(delays) if delays else None,
                delay_min=min(delays) if delays else None,
                delay_max=max(delays) if delays else None,
                drifted_share=statistics.fmean(shares) if shares else None,
                alerts_before_onset=early,
                active_at_onset=carried,
            )
        )
    return found


# --- goals and output ---------------------------------------------------------------------------


def goals(phases: Sequence[PhaseResult]) -> list[Goal]:
    found = []
    for r in phases:
        if r.kind == "fleet" and r.processes == 1 and r.ratio is not None and "tls" not in r.phase:
            found.append(
                Goal(
                    f"{r.phase}: windows stored/s >= {RATIO_GOAL} x bare subscriber "
                    f"({r.devices:,} devices)",
                    f"{r.ratio:.3f} ({r.stored_per_s:,.0f} vs {r.bare_per_s or 0:,.0f} /s)",
                    r.ratio >= RATIO_GOAL,
                )
            )
        if r.kind == "backlog":
            found.append(
                Goal(
                    f"{r.phase}: a backlog of {r.windows:,} windows from {r.devices} devices "
                    f"drains at >= {BACKLOG_GOAL:,.0f} stored/s",
                    f"{r.stored_per_s:,.0f} /s ({r.drain_seconds:.1f} s)",
                    r.stored_per_s >= BACKLOG_GOAL,
                )
            )
    for r in phases:
        stored = sum(p.stored for p in r.per_process)
        dup = sum(p.duplicates for p in r.per_process)
        errors = sum(p.evaluation_errors for p in r.per_process)
        found.append(
            Goal(
                f"{r.phase}: every window stored exactly once, every device evaluated at its "
                "newest window, no evaluation error",
                f"{r.windows_in_db} rows, {stored} stored, {dup} duplicates; "
                f"{r.devices_evaluated} of {r.devices_in_db} devices; "
                f"{r.evaluations_in_db} evaluations (coalesced) for {r.windows} windows; "
                f"{errors} errors",
                r.exactly_once and r.devices_evaluated == r.devices_in_db and errors == 0,
            )
        )
    return found


def _opt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def throughput_table(rows: Sequence[PhaseResult]) -> str:
    headers = (
        "phase",
        "procs",
        "windows",
        "devices",
        "published/s",
        "bare sub/s",
        "stored/s",
        "ratio",
        "per process/s",
        "drain s",
        "evaluated s",
        "evals",
        "lag p50 s",
        "lag p95 s",
        "CPU ms/window",
        "CPU ms/eval",
        "alerts",
    )
    cells = [
        (
            r.phase,
            r.processes,
            r.windows,
            r.devices,
            f"{r.publish_per_s:,.0f}",
            _opt(r.bare_per_s, ",.0f"),
            f"{r.stored_per_s:,.0f}",
            _opt(r.ratio, ".3f"),
            " + ".join(f"{p.per_s:,.0f}" for p in r.per_process),
            f"{r.drain_seconds:.1f}",
            f"{r.evaluated_seconds:.1f}",
            r.evaluations_in_db,
            _opt(r.lag_p50_s, ".2f"),
            _opt(r.lag_p95_s, ".2f"),
            " + ".join(f"{p.intake_cpu_ms:.3f}" for p in r.per_process)
            + ("" if r.bare_cpu_ms is None else f" (bare {r.bare_cpu_ms:.3f})"),
            " + ".join(f"{p.evaluation_cpu_ms:.1f}" for p in r.per_process),
            r.alerts_in_db,
        )
        for r in rows
    ]
    r0 = rows[0]
    title = (
        f"Telemetry windows stored per second: windows of {r0.payload_bytes_mean:,.0f} bytes "
        f"(64 features), QoS 1; fleet and backlog: each consumer drains the broker's queue alone "
        f"(bare sub: paho, MQTT 5, counting only); live: published at a steady rate to a running "
        f"service; lag: a window's arrival to its verdict; CPU per stored window, every thread "
        f"but the evaluations' (a load-independent view of the ratio) ({os.cpu_count()} CPUs)"
    )
    return render(headers, cells, title=title)


def scaling_lines(rows: Sequence[PhaseResult]) -> str:
    lines = []
    plain = [r for r in rows if r.phase == "sqlite"]
    tls = [r for r in rows if r.phase == "sqlite tls"]
    if plain and tls:
        lines.append(
            f"TLS, sqlite: the service stores {tls[0].stored_per_s:,.0f}/s over TLS with a "
            f"password, {tls[0].stored_per_s / plain[0].stored_per_s:.2f} x plain MQTT "
            f"({plain[0].stored_per_s:,.0f}/s); the bare subscriber "
            f"{(tls[0].bare_per_s or 0) / (plain[0].bare_per_s or 1):.2f} x"
        )
    for database in ("sqlite", "postgresql"):
        one = [
            r
            for r in rows
            if r.kind == "fleet"
            and r.database == database
            and r.processes == 1
            and r.phase != "sqlite tls"
        ]
        two = [r for r in rows if r.kind == "fleet" and r.database == database and r.processes == 2]
        if one and two:
            lines.append(
                f"Scaling, {database}: 2 processes store {two[0].stored_per_s:,.0f}/s, "
                f"{two[0].stored_per_s / one[0].stored_per_s:.2f} x one process "
                f"({one[0].stored_per_s:,.0f}/s)"
            )
    return "\n".join(lines)


def breakdown_table(rows: Sequence[Breakdown]) -> str:
    headers = ("per window, ms", *(b.database for b in rows))
    cells: list[tuple[Any, ...]] = [
        (label, *(f"{b.stage_ms[key]:.3f}" for b in rows)) for key, label in STAGES
    ]
    cells += [
        ("total", *(f"{b.stage_ms['total']:.3f}" for b in rows)),
        ("  = windows/s in-process, no MQTT", *(f"{b.per_s:,.0f}" for b in rows)),
        ("SQL statements per window", *(f"{b.statements_per_window:.2f}" for b in rows)),
        ("transactions (commits) per window", *(f"{b.transactions_per_window:.2f}" for b in rows)),
        ("  DBAPI execute, ms", *(f"{b.dbapi_execute_ms:.3f}" for b in rows)),
        ("  commit, ms", *(f"{b.commit_ms:.3f}" for b in rows)),
    ]
    title = (
        f"Where Service.handle_batch's time goes ({rows[0].windows} windows in batches of "
        f"{PROFILE_BATCH} after warm-up; stage wrappers, no profiler)"
    )
    return render(headers, cells, title=title)


def library_table(rows: Sequence[Breakdown]) -> str:
    names = list(dict.fromkeys(k for b in rows for k in b.by_library))
    headers = ("cProfile own time per window", *(f"{b.database} us" for b in rows), "share")
    totals = [sum(b.by_library.values()) for b in rows]
    cells = [
        (
            name,
            *(f"{b.by_library.get(name, 0.0):,.0f}" for b in rows),
            " / ".join(
                f"{b.by_library.get(name, 0.0) / t * 100:.0f} %"
                for b, t in zip(rows, totals, strict=True)
            ),
        )
        for name in names
    ]
    return render(headers, cells, title="Own time by library under cProfile (inflates Python)")


def top_table(b: Breakdown, top: int = 12) -> str:
    cells = [
        (
            r["function"][-70:],
            fmt(r["calls_per_window"], 2),
            f"{r['own_us']:.0f}",
            f"{r['cumulative_us']:.0f}",
        )
        for r in b.top[:top]
    ]
    return render(
        ("function", "calls/window", "own us", "cum us"),
        cells,
        title=f"Costliest functions by own time, {b.database} (cProfile, per window)",
    )


def drift_tables(calm: Sequence[CalmRow], delays: Sequence[DelayRow], s: Settings) -> str:
    t = DEFAULT_THRESHOLDS
    a = render(
        ("rows", "feature", "windows", "drifted %", "JS median", "JS p99", "alerts", "per 1,000"),
        [
            (
                r.source,
                r.feature,
                r.windows,
                fmt(None if r.drifted_share is None else r.drifted_share * 100, 2),
                fmt(r.js_median),
                fmt(r.js_p99),
                r.alerts,
                f"{r.per_1000:.1f}",
            )
            for r in calm
        ],
        title=(
            f"No drift: windows of {s.window_samples} digits resampled from the test split "
            f"(held-out: a re-used pool of 269 rows, not independent draws; false alarms on "
            f"independent rows are in benchmarks/drift.py) or the training split (the input "
            f"baseline's own rows) through Service.handle "
            f"(K = {t.k_raise}; JS >= {t.js} or PSI >= {t.psi_alert}, raised to the noise floor "
            f"at alpha {t.noise_alpha}); alerts = alerts raised"
        ),
    )
    b = render(
        (
            "shift",
            "feature",
            "detected",
            "delay median",
            "min",
            "max",
            "drifted % after onset",
            "raised before",
            "up at onset",
        ),
        [
            (
                f"+{r.shift:g}",
                r.feature,
                f"{r.detected}/{r.repeats}",
                fmt(r.delay_median),
                fmt(r.delay_min),
                fmt(r.delay_max),
                fmt(None if r.drifted_share is None else r.drifted_share * 100, 2),
                r.alerts_before_onset,
                r.active_at_onset,
            )
            for r in delays
        ],
        title=(
            f"Drift from window {s.drift_onset} on (held-out pixels + shift, clipped): delay = "
            f"windows from the onset until the feature's alert is active (the onset's window "
            f"counts 1; K = {t.k_raise} gives {t.k_raise} unless the window before was judged "
            f"drifted or an alert was up); missed: not active within {s.drift_after} windows"
        ),
    )
    return f"{a}\n\n{b}"


def versions() -> dict[str, str]:
    found = package_versions(("edgeops", "paho-mqtt", "sqlalchemy", "psycopg", "msgspec", "numpy"))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=10)
        found["mosquitto"] = out.stdout.splitlines()[0].split()[-1]
    return found


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


def stream_for(phase: Phase, bases: Sequence[wire.Telemetry], s: Settings) -> Stream:
    if phase.kind == "fleet":
        return make_stream(bases, s.devices, s.windows_per_device, "dev")
    if phase.kind == "backlog":
        rounds = -(-s.backlog_windows // s.backlog_devices)
        return make_stream(bases, s.backlog_devices, rounds, "backlog")[: s.backlog_windows]
    rounds = max(1, round(s.live_rate * s.live_seconds / s.devices))
    return make_stream(bases, s.devices, rounds, "live")


def run(s: Settings) -> None:
    if sys.platform != "linux":
        raise SystemExit("this benchmark reads CLOCK_MONOTONIC across processes: Linux only")
    # The services log every alert raised and cleared; the tables count them.
    logging.getLogger("edgeops.service").setLevel(logging.ERROR)
    work = s.out / "service"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    p = prepare(work / "models", s)
    say(f"{s.base_windows} real windows of {s.window_samples} predictions (64 features)")
    bases = real_windows(p.tabular, work / "base-agent", s)
    profile_stream = make_stream(
        bases, 100, -(-(s.profile_warmup + 2 * s.profile_windows) // 100), "prof"
    )

    need_pg = any(ph.database == "postgresql" for ph in s.phases)
    with Postgres() if need_pg else contextlib.nullcontext() as pg:
        phases = [run_phase(ph, stream_for(ph, bases, s), p.tabular, pg, s) for ph in s.phases]
        if s.intake_only:
            met = goals(phases)
            print(throughput_table(phases))
            print(scaling_lines(phases))
            print()
            print(goal_lines(met))
            write_json(
                s.out / "service.json",
                s,
                throughput=[asdict(r) | {"exactly_once": r.exactly_once} for r in phases],
                goals=[asdict(g) for g in met],
                all_goals_pass=all(g.passed for g in met),
            )
            return
        say("profiling Service.handle_batch")
        breakdowns = [
            breakdown("sqlite", f"sqlite:///{work / 'profile.db'}", profile_stream, p.tabular, s)
        ]
        if pg is not None:
            breakdowns.append(
                breakdown(
                    "postgresql", pg_database(pg, "bench_profile"), profile_stream, p.tabular, s
                )
            )

    calm = []
    for source in (HELD_OUT, TRAINING):
        say(f"drift: a no-drift stream of {s.drift_windows} windows of {source} rows")
        calm.append(
            drift_stream(p.digits, StreamSpec(source, s.drift_windows, 0), work / "drift", s)
        )
    drifted: dict[float, list[StreamRun]] = {}
    for shift in s.shifts:
        say(f"drift: {s.drift_repeats} held-out streams shifted +{shift:g}")
        drifted[shift] = [
            drift_stream(
                p.digits,
                StreamSpec(HELD_OUT, s.drift_onset + s.drift_after, seed, s.drift_onset, shift),
                work / "drift",
                s,
            )
            for seed in range(1, s.drift_repeats + 1)
        ]
    calm_summary = [row for r in calm for row in calm_rows(r)]
    delay_summary = [row for runs in drifted.values() for row in delay_rows(runs)]
    met = goals(phases)

    print(throughput_table(phases))
    print(scaling_lines(phases))
    print()
    print(breakdown_table(breakdowns))
    print()
    print(library_table(breakdowns))
    print()
    print(top_table(breakdowns[0]))
    print()
    print(drift_tables(calm_summary, delay_summary, s))
    print()
    print(goal_lines(met))
    out = s.out / "service.json"
    write_json(
        out,
        s,
        throughput=[
            asdict(r)
            | {"exactly_once": r.exactly_once, "lag_p50_s": r.lag_p50_s, "lag_p95_s": r.lag_p95_s}
            for r in phases
        ],
        scaling=scaling_lines(phases).splitlines(),
        breakdown=[asdict(b) for b in breakdowns],
        drift={
            "thresholds": asdict(DEFAULT_THRESHOLDS),
            "no_drift": [asdict(r) for r in calm_summary],
            "drifted": [asdict(r) for r in delay_summary],
            "alerts_raised": {
                r.spec.device: r.raised for r in (*calm, *itertools.chain(*drifted.values()))
            },
        },
        goals=[asdict(g) for g in met],
        all_goals_pass=all(g.passed for g in met),
        bundles=[str(p.digits.bundle), str(p.tabular.bundle)],
    )
    say(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer windows, streams and repeats")
    size.add_argument("--smoke", action="store_true", help="every part at a toy size (tests)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument(
        "--phases",
        help="only these intake phases (comma-separated names, e.g. 'sqlite,backlog sqlite'); "
        "skips the breakdown and the drift part",
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        (child_bare if spec["role"] == "bare" else child_service)(spec)
        return 0
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    s = Settings.of(mode, args.out.resolve())
    if args.phases:
        names = [n.strip() for n in args.phases.split(",")]
        known = {ph.name: ph for ph in FLEET_PHASES + BACKLOG_PHASES + LIVE_PHASES}
        unknown = [n for n in names if n not in known]
        if unknown:
            ap.error(f"unknown phase(s) {unknown}; known: {', '.join(known)}")
        s = replace(s, phases=tuple(known[n] for n in names), intake_only=True)
    run(s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
