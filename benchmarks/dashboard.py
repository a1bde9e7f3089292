"""Dashboard benchmark: what the web dashboard costs the service.

Run::

    python benchmarks/dashboard.py [--quick | --smoke] [--out benchmarks/results]

What it measures
----------------
A SQLite database is filled as a fleet would fill it, through the service's own storage code
(``Store.add_batch`` for windows and statuses, the drift table's rows as real evaluations wrote
them, alerts, a deployment):

* ``devices`` devices (1,000) send a window every ``cadence`` seconds (300) for ``hours`` (24):
  real ``wire.Telemetry`` windows of a real agent serving the digits CNN (``benchmarks/
  service.py``'s helpers: the same bundle, the same windows), copied per device and time;
* ``busy`` of them (3) send one every 10 s (the agent's default) all day, with a drift
  evaluation per window (its rows copied from a real evaluation of that window, every check
  with its value, threshold and floor): the heaviest device page there is;
* the others have a drift evaluation every ``drift_every`` seconds (1,800);
* 5 % of the devices have active alerts; one deployment targets every device (their statuses
  name an older build of the model, so that it does), aborted before it sent anything (no
  device is there to answer it).

Then ``edgeops serve`` runs on that database (a real process, its REST API on a free port, a
real mosquitto), and from this process:

1. Latency of each page's files and data, ``requests`` sequential GETs each (after a warm-up),
   p50 and p95 on the client's clock, with a read token, next to ``/healthz`` (the server's
   floor, measured side by side). The goal: every page's data under 200 ms at p95 with the
   views' default span (6 h); the device page over 24 h is reported too.
2. Intake throughput with the dashboard polled every second and without: ``stream`` windows
   (from ``load`` new devices) published at once (QoS 1) while the service runs; stored per
   second is the stream over the time from the first publish to the last window stored (the
   database polled by id). In the "with" runs a poller process GETs one page's data every
   second (a dashboard tab polling at 1 s): the fleet page, or the busiest device's page. Runs
   rotate (without, fleet, device, ...), ``repeats`` of each; the ratio of the medians to the
   "without" median is the figure, for each page (goal >= 0.95).

``--smoke`` runs every step at a toy size (the tests run it). Results go to
``<out>/dashboard.json``; the database and the service's log stay under ``<out>/dashboard/``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as mqtt
import service as service_bench
import sqlalchemy as sa
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic
from bench_smoke import add_mode_options, mode_of
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.core import topics, wire
from edgeops.core.terminal import render
from edgeops.service import storage
from edgeops.service.auth import Tokens
from edgeops.service.storage import schema
from edgeops.testing import Mosquitto, free_port

FLEET = service_bench.FLEET
LATENCY_GOAL_MS = 200.0
RATIO_GOAL = 0.95
BUSY_CADENCE = 10.0


@dataclass(frozen=True)
class Settings:
    mode: str
    out: Path
    devices: int
    hours: float
    cadence: float
    busy: int
    drift_every: float
    requests: int
    load: int
    stream: int
    repeats: int

    @classmethod
    def of(cls, mode: str, out: Path) -> Settings:
        if mode == "smoke":
            return cls(mode, out, 20, 1.0, 60.0, 1, 600.0, 8, 20, 200, 1)
        if mode == "quick":
            return cls(mode, out, 300, 6.0, 300.0, 2, 1800.0, 30, 100, 2000, 2)
        return cls(mode, out, 1000, 24.0, 300.0, 3, 1800.0, 60, 200, 20000, 5)


# --- the database -------------------------------------------------------------------------------


def template_drift(
    m: service_bench.Model, base: wire.Telemetry, work: Path
) -> list[dict[str, Any]]:
    """The drift rows one real evaluation of ``base`` writes (ids and keys left to fill)."""
    svc = service_bench.new_service(f"sqlite:///{work / 'template.db'}", m)
    try:
        t = msgspec.structs.replace(base, device="template", sent=time.time())
        svc.handle(topics.telemetry(FLEET, "template"), wire.encode(t))
        rows = svc.store.drift.rows(latest=False)
    finally:
        svc.engine_db.dispose()
    newest = max(r["evaluated"] for r in rows)
    found = [r for r in rows if r["evaluated"] == newest and r["scope"] == "device"]
    for r in found:
        del r["id"]
    if not found:
        raise RuntimeError("the template evaluation wrote no drift rows")
    return found


def fill(
    url: str, m: service_bench.Model, bases: Sequence[wire.Telemetry], s: Settings
) -> dict[str, Any]:
    """The database as ``s`` describes it; what was stored."""
    svc = service_bench.new_service(url, m)
    store = svc.store
    names = [f"dev-{i:04d}" for i in range(s.devices)]
    busy = names[: s.busy]
    boots = {n: uuid.uuid4().hex[:16] for n in names}
    seqs = dict.fromkeys(names, 0)
    now = time.time()
    start = now - s.hours * 3600.0
    template = template_drift(m, bases[0], s.out / "dashboard")
    windows = drift_rows = 0
    k = 0

    def window(name: str, end: float, length: float) -> storage.NewWindow:
        nonlocal k
        seqs[name] += 1
        base = bases[k % len(bases)]
        k += 1
        t = msgspec.structs.replace(
            base, device=name, boot=boots[name], seq=seqs[name], sent=end + 0.01,
            window_start=end - length, window_end=end,
        )  # fmt: skip
        return storage.NewWindow(FLEET, t, wire.encode(t))

    def evaluated(name: str, at: float) -> list[dict[str, Any]]:
        return [{**r, "fleet": FLEET, "device": name, "evaluated": at} for r in template]

    # Every device every `cadence`, the busy ones every 10 s, in time order (arrival order).
    span, every, fast = int(s.hours * 3600), int(s.cadence), int(BUSY_CADENCE)
    offsets = sorted(set(range(every, span + 1, every)) | set(range(fast, span + 1, fast)))
    next_drift = dict.fromkeys(names, start + s.drift_every)
    pending_drift: list[dict[str, Any]] = []
    last_say = time.monotonic()
    for offset in offsets:
        at = start + offset
        who = names if offset % every == 0 else busy
        batch = [window(n, at, s.cadence if n not in busy else BUSY_CADENCE) for n in who]
        store.telemetry.add_batch(batch, now=at)
        windows += len(batch)
        for n in who:
            if n in busy or at >= next_drift[n]:
                pending_drift += evaluated(n, at)
                next_drift[n] = at + s.drift_every
        if len(pending_drift) >= 20_000:
            with store.begin() as conn:
                store.drift.add(conn, pending_drift)
            drift_rows += len(pending_drift)
            pending_drift = []
        if time.monotonic() - last_say > 15:
            say(f"  filled {windows:,} windows, {drift_rows:,} drift rows")
            last_say = time.monotonic()
    if pending_drift:
        with store.begin() as conn:
            store.drift.add(conn, pending_drift)
        drift_rows += len(pending_drift)
    # Statuses name an older build (another sha256), so that the deployment of the bundle
    # targets every device, as a rollout to the whole fleet does.
    model = bases[0].model
    assert model is not None
    older = wire.ModelRef(name=model.name, version="0.9.0", sha256="0" * 64)
    statuses = []
    for n in names:
        seqs[n] += 1
        statuses.append(
            (FLEET, wire.Status(device=n, boot=boots[n], seq=seqs[n], sent=now, online=True,
                                model=older, agent_version="0.1.0"))
        )  # fmt: skip
    store.telemetry.add_batch(statuses=statuses, now=now)
    alerted = names[:: max(1, round(1 / 0.05))]
    rows = [
        {
            "key": f"device|{FLEET}|{n}|{r['model_name']}|{r['model_version']}|{r['feature']}",
            "scope": "device",
            "fleet": FLEET,
            "device": n,
            "model_name": r["model_name"],
            "model_version": r["model_version"],
            "feature": r["feature"],
            "kind": r["kind"],
            "raised": now - 600,
            "cleared": None,
            "detail": {"js": r["js"]},
            "reference": "training",
            "cleared_reason": None,
        }
        for n in alerted
        for r in template[:2]
    ]
    with store.begin() as conn:
        store.alerts.add(conn, rows)
    dep = svc.rollouts.create(model.name, model.version, FLEET)
    # Aborted before any command went out: its page lists every device, and no rollout step
    # runs in the measured service (its devices are not there to answer).
    svc.rollouts.abort(dep["id"])
    svc.engine_db.dispose()
    return {
        "windows": windows,
        "drift_rows": drift_rows,
        "alerts": len(rows),
        "deployment": dep["id"],
        "model": model.name,
        "busy": busy[0],
        "ordinary": names[-1],
    }


# --- the service ----------------------------------------------------------------------------------


class Serve:
    """``edgeops serve`` on the database, in a process of its own."""

    def __init__(self, url: str, broker: Mosquitto, work: Path) -> None:
        self.port = free_port()
        self.log = (work / "serve.log").open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "edgeops", "serve", "--db", url,
                "--broker", f"mqtt://127.0.0.1:{broker.port}", "--group", "dashboard-bench",
                "--http-port", str(self.port),
            ],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"edgeops serve exited; see {work / 'serve.log'}")
            time.sleep(0.2)
        raise RuntimeError("edgeops serve did not get ready in 60 s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def get(url: str, token: str | None) -> float:
    """One GET, its seconds; the body read whole."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as r:
        r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: HTTP {r.status}")
    return time.perf_counter() - t0


@dataclass(frozen=True)
class LatencyRow:
    what: str
    path: str
    kind: str
    """page (files), data (what a page polls), baseline."""
    p50_ms: float
    p95_ms: float
    bytes: int


def measure(
    base: str, token: str, paths: Sequence[tuple[str, str, str]], n: int
) -> list[LatencyRow]:
    rows = []
    for what, path, kind in paths:
        for _ in range(3):
            get(base + path, token)
        times = sorted(get(base + path, token) * 1000 for _ in range(n))
        headers = {"Authorization": f"Bearer {token}"}
        with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers)) as r:
            size = len(r.read())
        rows.append(LatencyRow(what, path, kind, statistics.median(times), _p95(times), size))
        say(f"  {what}: p50 {rows[-1].p50_ms:.1f} ms, p95 {rows[-1].p95_ms:.1f} ms")
    return rows


def _p95(sorted_values: Sequence[float]) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(0.95 * (len(sorted_values) - 1)))]


# --- intake with and without the dashboard --------------------------------------------------------


POLLED = {
    "fleet": ("/v1/views/fleet",),
    "device": ("/v1/views/devices/{device}",),
}
"""What a dashboard tab polls every second: the fleet page, or the busiest device's page."""


@dataclass(frozen=True)
class IntakeRun:
    polled: str
    """none, or the page polled every second (POLLED)."""
    windows: int
    seconds: float
    stored_per_s: float
    polls: int


def publish(port: int, stream: service_bench.Stream) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(topic, payload, qos=1) for topic, payload in stream]
    for i in infos:
        i.wait_for_publish(60)
    c.loop_stop()
    c.disconnect()


def intake_run(
    serve: Serve, broker: Mosquitto, engine: sa.Engine, bases: Sequence[wire.Telemetry],
    s: Settings, polled: str, token: str, device: str, round_: int,
) -> IntakeRun:  # fmt: skip
    tag = f"load{round_}-{polled}"
    stream = service_bench.make_stream(bases, s.load, max(1, s.stream // s.load), tag)
    with engine.connect() as conn:
        first_id = conn.execute(sa.select(sa.func.max(schema.windows.c.id))).scalar() or 0
    poller = None
    if polled != "none":
        paths = ",".join(p.format(device=device) for p in POLLED[polled])
        poller = subprocess.Popen(
            [sys.executable, "-I", "-c", POLLER, serve.url, token, paths],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert poller.stdout is not None
        if poller.stdout.readline().strip() != "ready":
            raise RuntimeError("the poller did not start")
        time.sleep(1.0)  # polling before the stream starts
    t0 = time.perf_counter()
    sender = threading.Thread(target=publish, args=(broker.port, stream))
    sender.start()
    stored = 0
    deadline = time.monotonic() + 600
    while stored < len(stream) and time.monotonic() < deadline:
        time.sleep(0.05)
        with engine.connect() as conn:
            stored = conn.execute(
                sa.select(sa.func.count()).where(schema.windows.c.id > first_id)
            ).scalar_one()
    seconds = time.perf_counter() - t0
    sender.join()
    polls = 0
    if poller is not None:
        poller.terminate()
        out, _ = poller.communicate(timeout=30)
        polls = int(out.strip() or 0) + 1  # and the first one
    if stored < len(stream):
        raise RuntimeError(f"only {stored} of {len(stream)} windows stored in 600 s")
    return IntakeRun(polled, len(stream), seconds, len(stream) / seconds, polls)


POLLER = """
import signal, sys, time, urllib.request
base, token, paths = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
made = 0
def done(*_):
    print(made, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
first = True
while True:
    t0 = time.monotonic()
    for path in paths:
        req = urllib.request.Request(base + path, headers={"Authorization": "Bearer " + token})
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
        made += 1
    if first:
        print("ready", flush=True)
        first = False
    time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
"""
"""The poller: a dashboard tab's data (``paths``) fetched every second, in a process that
imports nothing but the standard library (so that its start-up costs the run nothing); it
says ``ready`` after its first poll and prints how many requests it made when terminated."""


# --- report ---------------------------------------------------------------------------------------


def latency_table(rows: Sequence[LatencyRow]) -> str:
    return render(
        ("what", "kind", "p50 ms", "p95 ms", "bytes", "path"),
        [(r.what, r.kind, r.p50_ms, r.p95_ms, r.bytes, r.path) for r in rows],
        title="Page files and data endpoints (sequential GETs, client clock)",
    )


def intake_table(runs: Sequence[IntakeRun]) -> str:
    return render(
        ("dashboard polled", "windows", "seconds", "stored/s", "polls"),
        [(r.polled, r.windows, r.seconds, r.stored_per_s, r.polls) for r in runs],
        title="Intake while the dashboard is polled every second, and without",
    )  # fmt: skip


def run(s: Settings) -> None:
    work = s.out / "dashboard"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    smoke = service_bench.Settings.of("smoke", s.out)
    say("preparing the bundles and real windows (benchmarks/service.py's helpers)")
    prepared = service_bench.prepare(work / "models", smoke)
    m = prepared.digits
    bases = service_bench.real_windows(m, work / "base-agent", smoke)
    url = f"sqlite:///{work / 'service.db'}"
    say(f"filling the database: {s.devices} devices, {s.hours:g} h, one window per {s.cadence:g} s")
    t0 = time.perf_counter()
    filled = fill(url, m, bases, s)
    fill_seconds = time.perf_counter() - t0
    db_bytes = sum(p.stat().st_size for p in work.glob("service.db*"))
    say(f"  {filled['windows']:,} windows, {filled['drift_rows']:,} drift rows")
    engine = storage.connect(url)
    token = Tokens(storage.Store(engine)).create("bench", "read")
    with Mosquitto() as broker:
        serve = Serve(url, broker, work)
        try:
            say("latency of each page's files and data")
            busy, ordinary = filled["busy"], filled["ordinary"]
            paths = [
                ("healthz (floor)", "/healthz", "baseline"),
                ("fleet page", "/ui/", "page"),
                ("device page", "/ui/device.html", "page"),
                ("app.js", "/ui/app.js", "page"),
                ("uPlot", "/ui/uPlot.iife.min.js", "page"),
                ("fleet view", "/v1/views/fleet", "data"),
                ("device view, busy, 6 h", f"/v1/views/devices/{busy}", "data"),
                ("device view, 6 h", f"/v1/views/devices/{ordinary}", "data"),
                ("model view", f"/v1/views/models/{filled['model']}", "data"),
                ("deployment", f"/v1/deployments/{filled['deployment']}", "data"),
                ("device view, busy, 24 h", f"/v1/views/devices/{busy}?hours=24", "data (24 h)"),
                ("device view, 24 h", f"/v1/views/devices/{ordinary}?hours=24", "data (24 h)"),
                ("metrics", "/metrics", "metrics"),
            ]
            latencies = measure(serve.url, token, paths, s.requests)
            say("intake with and without the dashboard polled every second")
            runs: list[IntakeRun] = []
            for i in range(s.repeats):
                for polled in ("none", *POLLED):
                    r = intake_run(serve, broker, engine, bases, s, polled, token, busy, i)
                    runs.append(r)
                    say(f"  polled={polled}: {r.stored_per_s:,.0f} windows/s ({r.polls} polls)")
        finally:
            serve.stop()
    engine.dispose()

    off = statistics.median(r.stored_per_s for r in runs if r.polled == "none")
    ratios = {
        page: statistics.median(r.stored_per_s for r in runs if r.polled == page) / off
        for page in POLLED
    }
    default_data = [r for r in latencies if r.kind == "data"]
    worst = max(default_data, key=lambda r: r.p95_ms)
    day = [r for r in latencies if r.kind == "data (24 h)"]
    worst_day = max(day, key=lambda r: r.p95_ms)
    floor = next(r for r in latencies if r.kind == "baseline")
    size = f"SQLite, {s.devices} devices, {s.hours:g} h of windows"
    goals = [
        Goal(
            f"every page's data p95 < {LATENCY_GOAL_MS:.0f} ms ({size}, 6-h views)",
            f"worst {worst.what}: {worst.p95_ms:.1f} ms ({worst.p95_ms / floor.p95_ms:.1f}x "
            f"/healthz)",
            worst.p95_ms < LATENCY_GOAL_MS,
        ),
        Goal(
            f"device page over 24 h p95 < {LATENCY_GOAL_MS:.0f} ms ({size})",
            f"worst {worst_day.what}: {worst_day.p95_ms:.1f} ms",
            worst_day.p95_ms < LATENCY_GOAL_MS,
        ),
        *(
            Goal(
                f"intake with the {page} page polled every second >= {RATIO_GOAL}x without",
                f"{ratio:.3f}x ({ratio * off:,.0f} vs {off:,.0f} windows/s, medians of "
                f"{s.repeats})",
                ratio >= RATIO_GOAL,
            )
            for page, ratio in ratios.items()
        ),
    ]
    load = os.getloadavg()
    print(
        f"Machine load (1, 5, 15 min) at the end: {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        f"on {os.cpu_count()} CPUs (other work on the machine slows every figure)"
    )
    print(
        f"Database: {filled['windows']:,} windows, {filled['drift_rows']:,} drift rows, "
        f"{filled['alerts']} active alerts, one deployment to every device; "
        f"{db_bytes / 2**20:,.0f} MiB, filled in {fill_seconds:.0f} s\n"
    )
    print(latency_table(latencies))
    print()
    print(intake_table(runs))
    print()
    print(goal_lines(goals))
    write_json_atomic(
        s.out / "dashboard.json",
        {
            "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in asdict(s).items()},
                         "smoke": s.mode == "smoke"},
            "database": {**filled, "bytes": db_bytes, "fill_seconds": round(fill_seconds, 1)},
            "latency": [asdict(r) for r in latencies],
            "intake": [asdict(r) for r in runs],
            "intake_ratio": ratios,
            "load_average": load,
            "goals": [asdict(g) for g in goals],
            "versions": package_versions(
                ["litestar", "sqlalchemy", "uvicorn", "prometheus-client"]),
            "elapsed_s": elapsed(),
        },
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_mode_options(ap, "300 devices, 6 h of windows")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    run(Settings.of(mode_of(args), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
