"""The intake against hostile input: thousands of well-formed hostile messages interleaved with
valid windows, through a real mosquitto, into ``edgeops serve`` processes on SQLite and
PostgreSQL that are killed and restarted mid-flood; and the mechanisms one by one (rate limits,
the new-device quota, the split of a batch the database refuses, supervision, retention, arrival
order, reads that survive a bad stored row)."""

from __future__ import annotations

import collections
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.agent import Agent
from edgeops.core import topics, wire
from edgeops.service import storage
from edgeops.service.config import IntakeLimits, Retention, ServiceConfig
from edgeops.service.evaluation import EvaluationQueue
from edgeops.service.report import ServiceClient
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.testing import Mosquitto, Postgres, free_port, make_api_token
from tests.hostile import Hostile, hostile_messages
from tests.test_agent import make_config
from tests.test_faults import until

FLEET = "hostile"


# --- valid windows from a real agent ----------------------------------------------------------


@pytest.fixture(scope="module")
def real_windows(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path_factory: Any
) -> list[wire.Telemetry]:
    """Windows a real agent closed on real digits (600 samples each)."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    rng = np.random.default_rng(3)
    tmp = tmp_path_factory.mktemp("agent")
    agent = Agent(
        make_config(tmp, 1, digits_bundles[0], signing_keys, device="source"),
        mqtt=False,
        http=False,
    ).start()
    out = []
    try:
        for _ in range(4):
            for _ in range(20):
                agent.predict(images[rng.integers(0, len(images), 30)])
            w = agent.flush_window()
            assert w is not None
            out.append(w)
    finally:
        agent.stop()
    return out


def fresh(t: wire.Telemetry, device: str, boot: str, seq: int) -> wire.Telemetry:
    now = time.time()
    return msgspec.structs.replace(
        t, device=device, boot=boot, seq=seq, sent=now, window_start=now - 10, window_end=now
    )


# --- a real service process -------------------------------------------------------------------


class Serve:
    """``edgeops serve`` as a process: started, killed with SIGKILL and started again under the
    same group, port and (so) MQTT session."""

    def __init__(self, tmp: Path, broker: int, db_url: str, bundle: Path, pub: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "serve.log"
        self.config = tmp / "serve.toml"
        # a flood of thousands: every refused message is kept, so its reason can be checked
        self.config.write_text("[intake]\ndead_letter_burst = 100000\n")
        self.args = [
            sys.executable,
            "-m",
            "edgeops",
            "serve",
            "--config",
            str(self.config),
            "--broker",
            f"mqtt://127.0.0.1:{broker}",
            "--db",
            db_url,
            "--http-port",
            str(self.port),
            "--group",
            f"g{uuid.uuid4().hex[:6]}",
            "--trusted-key",
            str(pub),
            "--bundle",
            str(bundle),
        ]
        self.proc: subprocess.Popen[bytes] | None = None
        self.api = ServiceClient(self.url, token=make_api_token(db_url, "read"))

    def start(self) -> Serve:
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(self.args, stderr=err)
        until(lambda: self.ready() or self.proc.poll() is not None, 60, self.tail)  # type: ignore[union-attr]
        assert self.proc.poll() is None, self.tail()
        return self

    def ready(self) -> bool:
        try:
            return bool(self.api.get("/readyz")["ready"])
        except Exception:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def rss(self) -> int:
        assert self.proc is not None
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


class Publisher:
    """One paho client publishing at QoS 1 and waiting for every PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'service.db'}"
    else:
        with Postgres() as pg:
            yield pg.url


def test_a_hostile_flood_cannot_stop_the_intake_through_a_kill_and_a_restart(
    database: str,
    real_windows: list[wire.Telemetry],
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    rng = random.Random(12)
    devices = [f"dev-{i:02d}" for i in range(12)]
    valid: dict[tuple[str, str, int], bytes] = {}
    for d in devices:
        for seq in range(40):
            t = fresh(real_windows[seq % len(real_windows)], d, f"boot-{d}", seq)
            valid[(d, t.boot, seq)] = wire.encode(t)
    hostile = hostile_messages(real_windows[0], FLEET, devices, rng, scale=60)
    stream: list[tuple[str, bytes, Hostile | None]] = [
        (topics.telemetry(FLEET, k[0]), p, None) for k, p in valid.items()
    ] + [(h.topic, h.payload, h) for h in hostile]
    rng.shuffle(stream)
    assert len(hostile) > 1400

    with Mosquitto(directory=tmp_path / "mosquitto") as broker:
        serve = Serve(tmp_path, broker.port, database, digits_bundles[0], signing_keys[1])
        serve.start()
        pub = Publisher(broker.port)
        try:
            third = len(stream) // 3
            pub.send([(t, p) for t, p, _ in stream[:third]])
            rss_before = serve.rss()
            serve.kill()  # mid-flood: what was delivered and not acked comes again
            pub.send([(t, p) for t, p, _ in stream[third : 2 * third]])  # queued while down
            serve.start()
            pub.send([(t, p) for t, p, _ in stream[2 * third :]])
            engine = storage.connect(database)
            try:

                def stored() -> int:
                    with engine.begin() as conn:
                        return int(
                            conn.execute(
                                sa.select(sa.func.count()).select_from(schema.windows)
                            ).scalar_one()
                        )

                until(lambda: stored() >= len(valid), 120, lambda: (stored(), serve.tail()))
                until(
                    lambda: serve.api.get("/v1/stats")["queue"]["messages"] == 0,
                    60,
                    serve.tail,
                )
                time.sleep(1.0)
                with engine.begin() as conn:
                    keys = [
                        tuple(r)
                        for r in conn.execute(
                            sa.select(
                                schema.windows.c.device, schema.windows.c.boot, schema.windows.c.seq
                            )
                        )
                    ]
                    dead = conn.execute(
                        sa.select(schema.dead_letters.c.reason, schema.dead_letters.c.sha256)
                    ).all()
            finally:
                engine.dispose()
            # every valid window exactly once, and nothing else
            assert len(keys) == len(set(keys)) == len(valid)
            assert set(keys) == set(valid)
            # every hostile message refused with its reason and kept (a redelivery after the
            # kill may be kept twice: distinct payloads are what counts)
            import hashlib

            kept: dict[str, set[str]] = collections.defaultdict(set)
            for reason, sha in dead:
                kept[sha].add(reason)
            for h in hostile:
                sha = hashlib.sha256(h.payload).hexdigest()
                assert sha in kept, f"{h.kind}: not kept as a dead letter"
                assert kept[sha] <= h.reasons, f"{h.kind}: {kept[sha]} not in {set(h.reasons)}"
            # healthy, and memory bounded (the 150 KB names once took a gigabyte)
            health = serve.api.get("/readyz")
            assert health["ready"] and health["alive"], health
            stats = serve.api.get("/v1/stats")
            assert stats["rejected_total"] > 0 and stats["stored_windows"] > 0, stats
            growth = serve.rss() - rss_before
            assert growth < 250 * 2**20, f"RSS grew {growth / 2**20:.0f} MB"
            assert serve.stop() == 0, serve.tail()
        finally:
            pub.close()
            if serve.proc is not None and serve.proc.poll() is None:
                serve.kill()
    log = serve.tail()
    assert "Traceback" not in log, log


# --- in-process: the mechanisms one by one ----------------------------------------------------


def service_config(tmp: Path, bundle: Path, pub: Path, **kw: Any) -> ServiceConfig:
    return ServiceConfig(
        broker="mqtt://127.0.0.1:1",
        db=kw.pop("db", f"sqlite:///{tmp / 'service.db'}"),
        http_port=0,
        bundles=(bundle,),
        trusted_keys=(pub,),
        fleet_interval=3600.0,
        **kw,
    )


@pytest.fixture
def make_service(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> Callable[..., Service]:
    made: list[Service] = []

    def make(**kw: Any) -> Service:
        s = Service(service_config(tmp_path, digits_bundles[0], signing_keys[1], **kw), http=False)
        for path in s.config.bundles:
            s.register_bundle(path)
        made.append(s)
        return s

    yield make  # type: ignore[misc]
    for s in made:
        s.engine_db.dispose()


def test_a_device_past_its_rate_and_new_devices_past_the_quota_are_refused_and_counted(
    make_service: Callable[..., Service], real_windows: list[wire.Telemetry]
) -> None:
    limits = IntakeLimits(device_rate=0.01, device_burst=10, new_devices_per_minute=5)
    s = make_service(intake=limits)
    noisy = [fresh(real_windows[0], "noisy", "b", i) for i in range(30)]
    s.handle_batch([(topics.telemetry(FLEET, "noisy"), wire.encode(t)) for t in noisy])
    assert s.counters.stored_windows == 10 and s.counters.rejected["rate limited"] == 20
    # rate-limited messages are counted, not kept as dead letters (that would be the flood)
    assert s.store.telemetry.dead_letters() == []
    many = [fresh(real_windows[0], f"new-{i}", "b", 0) for i in range(12)]
    s.handle_batch([(topics.telemetry(FLEET, t.device), wire.encode(t)) for t in many])
    # "noisy" took one of the five new-device places
    assert s.counters.rejected["device quota"] == 8
    assert s.counters.stored_windows == 14
    # a device already stored is known after a restart: not new again
    again = make_service(intake=limits)
    t = fresh(real_windows[0], "new-0", "b", 1)
    again.handle(topics.telemetry(FLEET, "new-0"), wire.encode(t))
    assert again.counters.stored_windows == 1


def test_a_message_the_database_refuses_is_split_out_and_dead_lettered(
    make_service: Callable[..., Service],
    real_windows: list[wire.Telemetry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = make_service()
    add_batch = s.store.telemetry.add_batch
    poison = "poison"

    def refusing(new_windows: Any = (), *a: Any, **kw: Any) -> storage.StoredBatch:
        if any(w.telemetry.device == poison for w in new_windows):
            raise sa.exc.DataError("INSERT", {}, Exception("value too long for this column"))
        return add_batch(new_windows, *a, **kw)

    monkeypatch.setattr(s.store.telemetry, "add_batch", refusing)
    acked: list[int] = []
    s.intake.ack = lambda batch: acked.extend(d.mid for d in batch)
    windows = [fresh(real_windows[i % 4], f"d{i}", "b", i) for i in range(31)]
    windows.insert(17, fresh(real_windows[0], poison, "b", 0))
    from edgeops.service.intake import Delivery

    batch = [
        Delivery(topics.telemetry(FLEET, t.device), wire.encode(t), time.time(), mid=i, qos=1)
        for i, t in enumerate(windows)
    ]
    outcome = s.intake.process(batch)
    assert len(outcome.windows) == 31 and outcome.dead_letters == 1
    assert sorted(acked) == list(range(32))  # every message acked, the poison too
    assert s.counters.rejected["storage"] == 1
    (dead,) = s.store.telemetry.dead_letters()
    assert dead["reason"] == "storage" and "too long" in dead["detail"]
    assert dead["size"] == len(batch[17].payload) == len(dead["payload"])  # kept whole


def test_a_worker_that_dies_is_restarted_then_the_service_fails_and_serve_exits_17(
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cli: Any,
) -> None:
    from edgeops.service.intake import Intake

    deaths: list[float] = []
    original = Intake.run

    def dies_twice(self: Intake) -> None:
        if len(deaths) < 2:
            deaths.append(time.monotonic())
            raise RuntimeError("a bug in the store loop")
        original(self)

    monkeypatch.setattr(Intake, "run", dies_twice)
    with Mosquitto() as broker:
        cfg = replace(
            service_config(tmp_path, digits_bundles[0], signing_keys[1]),
            broker=f"mqtt://127.0.0.1:{broker.port}",
        )
        with Service(cfg, http=False) as s:
            until(lambda: len(deaths) == 2 and s.workers.restarted == 2, 20, s.health)
            until(lambda: s.health()["ready"], 20, s.health)
            assert s.failed is None

        def always_dies(self: Intake) -> None:
            raise RuntimeError("a bug in the store loop")

        monkeypatch.setattr(Intake, "run", always_dies)
        port = free_port()
        t0 = time.monotonic()
        result = cli(
            "serve",
            "--broker",
            f"mqtt://127.0.0.1:{broker.port}",
            "--db",
            f"sqlite:///{tmp_path / 'two.db'}",
            "--http-port",
            port,
            "--trusted-key",
            signing_keys[1],
            "--bundle",
            digits_bundles[0],
        )
        assert result.code == 17, result.out + result.err
        assert "store died 6 times" in result.err and "a bug in the store loop" in result.err
        # the daemon's log says each death; the last line is the one-line error
        assert result.err.strip().splitlines()[-1].startswith("error: the service stopped")
        assert "Traceback" not in result.err
        assert time.monotonic() - t0 < 60


def test_a_stalled_worker_makes_the_service_not_ready(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgeops.service.workers import Workers

    stop = threading.Event()
    release = threading.Event()
    beat = [time.monotonic()]
    w = Workers(stop, exit_after=1.0)
    w.add("stuck", lambda: release.wait(30), heartbeat=lambda: beat[0], stall_after=0.3)
    w.start()
    try:
        assert w.check() == []
        time.sleep(0.5)
        problems = w.check()
        assert problems and "stuck: stalled" in problems[0] and w.failed is None
        time.sleep(1.0)
        w.check()
        assert w.failed is not None and "stalled" in w.failed and w.failed_event.is_set()
    finally:
        release.set()
        stop.set()
        w.join(5)


def test_retention_purges_old_rows_and_keeps_the_newest_dead_letters(
    make_service: Callable[..., Service], real_windows: list[wire.Telemetry]
) -> None:
    s = make_service()
    now = time.time()
    old, new = now - 20 * 86400, now
    for i, when in enumerate([old, old, new]):
        t = fresh(real_windows[0], "d", "b", i)
        s.store.telemetry.add_batch([storage.NewWindow(FLEET, t, wire.encode(t))], now=when)
    # in arrival order, each a second after the one before
    dead = [storage.DeadLetter(now - 29 + i, "t", "bad field", "x", b"p" * 10) for i in range(30)]
    s.store.telemetry.add_batch(dead=dead, now=now)
    deleted = s.store.purge(Retention(windows=14, dead_letter_rows=12), now=now, chunk=7)
    assert deleted["windows"] == 2 and deleted["dead_letters"] == 18
    assert s.store.count_rows(schema.windows) == 1 and s.store.count_rows(schema.dead_letters) == 12
    kept = {round(now - r["received"]) for r in s.store.telemetry.dead_letters()}
    assert kept == set(range(12))  # the newest


def test_spans_follow_arrival_not_the_device_clock(
    make_service: Callable[..., Service], real_windows: list[wire.Telemetry]
) -> None:
    s = make_service(span_windows=30)
    now = time.time()
    # a device whose clock jumps back an hour after its third window
    sent = [now - 30, now - 20, now - 10, now - 3600, now - 3590]
    for i, when in enumerate(sent):
        t = msgspec.structs.replace(
            fresh(real_windows[i % 4], "clock", "b", i),
            sent=when,
            window_start=when - 10,
            window_end=when,
            count=300,
        )
        s.handle(topics.telemetry(FLEET, "clock"), wire.encode(t))
    (newest,) = s.store.telemetry.recent_windows(device="clock", limit=1)
    assert newest.telemetry.seq == 4  # the last to arrive, not the latest clock
    span = s.store.telemetry.device_span(
        newest, since=newest.received - 600, min_samples=500, limit=30, known={}
    )
    assert [w.telemetry.seq for w in span] == [4, 3]


def test_a_window_flushed_after_a_rollback_does_not_undo_the_devices_model(
    make_service: Callable[..., Service], real_windows: list[wire.Telemetry]
) -> None:
    """The window the previous model served is closed at a switch or a rollback and reaches
    the service after the status naming the model now served: fleet status keeps the latter."""
    s = make_service()
    now = time.time()
    served = real_windows[0].model
    assert served is not None
    newer = msgspec.structs.replace(served, version="1.1.0")
    status = wire.Status(
        device="rb", boot="b", seq=1, sent=now - 1.0, online=True, model=served, started=now - 60
    )
    flushed = msgspec.structs.replace(
        fresh(real_windows[0], "rb", "b", 2), model=newer, window_end=now - 1.1, sent=now - 0.5
    )
    s.store.telemetry.set_status(FLEET, status)
    s.store.telemetry.add_window(FLEET, flushed, wire.encode(flushed))
    row = s.store.devices.get(FLEET, "rb")
    assert row is not None and row["model_version"] == served.version
    # A window closed after the status names the model the device serves now.
    later = msgspec.structs.replace(
        fresh(real_windows[1], "rb", "b", 3), model=newer, window_end=now, sent=now
    )
    s.store.telemetry.add_window(FLEET, later, wire.encode(later))
    row = s.store.devices.get(FLEET, "rb")
    assert row is not None and row["model_version"] == "1.1.0"


def test_one_fleet_that_fails_to_evaluate_does_not_stop_the_others(
    make_service: Callable[..., Service],
    real_windows: list[wire.Telemetry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    s = make_service()
    for fleet in ("a", "b", "c"):
        t = fresh(real_windows[0], "d1", "b", 0)
        s.handle(topics.telemetry(fleet, "d1"), wire.encode(t))
    evaluate = s.engine._evaluate

    def broken_for_b(scope: str, fleet: str, *a: Any) -> None:
        if scope == "fleet" and fleet == "b":
            raise ValueError("a bad span")
        evaluate(scope, fleet, *a)

    monkeypatch.setattr(s.engine, "_evaluate", broken_for_b)
    assert s.engine.evaluate_fleets() == 1
    fleets = {r["fleet"] for r in s.store.drift.rows(device="_fleet")}
    assert fleets == {"a", "c"}
    assert s.stats()["evaluation_errors"] == 1


def test_reads_survive_a_row_that_no_longer_decodes(
    make_service: Callable[..., Service], real_windows: list[wire.Telemetry]
) -> None:
    from edgeops.service.api import device_summary
    from edgeops.service.rollouts import _serving

    s = make_service()
    good = fresh(real_windows[0], "d", "b", 1)
    s.handle(topics.telemetry(FLEET, "d"), wire.encode(good))
    # a row stored by an older version, before the wire's bounds: its histogram does not add up
    bad = msgspec.to_builtins(fresh(real_windows[1], "d", "b", 2))
    bad["latency"]["count"] = 10**9
    row = {
        "fleet": FLEET,
        "device": "d",
        "boot": "b",
        "seq": 2,
        "received": time.time(),
        "window_start": 0.0,
        "window_end": 0.0,
        "model_name": good.model.name if good.model else None,
        "model_version": good.model.version if good.model else None,
        "count": 600,
        "errors": 0,
        "bad_inputs": 0,
        "payload": msgspec.json.encode(bad),
    }
    with s.store.begin() as conn:
        conn.execute(sa.insert(schema.windows), [row])
    summary = device_summary(s, FLEET, "d")
    assert summary.latency is not None and summary.latency.windows == 1
    assert summary.predictions == good.count
    assert _serving([wire.encode(good), row["payload"]]).predictions == good.count
    s.handle(topics.telemetry(FLEET, "d"), wire.encode(fresh(real_windows[2], "d", "b", 3)))
    assert s.stats()["evaluation_errors"] == 0


def test_the_evaluation_queue_coalesces_per_device_and_is_bounded(
    real_windows: list[wire.Telemetry],
) -> None:
    q = EvaluationQueue(max_keys=3, keep=2)

    def stored(i: int, device: str) -> storage.StoredWindow:
        return storage.StoredWindow(
            i, FLEET, device, fresh(real_windows[0], device, "b", i), float(i)
        )

    q.put([stored(1, "a"), stored(2, "b"), stored(3, "a"), stored(4, "a")])
    assert len(q) == 2 and q.coalesced == 2
    taken = q.take(0)
    assert taken is not None
    key, pending = taken
    assert key[1] == "a" and pending.newest.id == 4 and sorted(pending.known) == [3, 4]
    assert pending.first_arrival == 1.0
    assert q.take(0) is not None and q.take(0) is None  # "a" runs: nothing else pending
    q.done(key)
    q.put([stored(5 + i, f"x{i}") for i in range(5)])
    assert len(q) == 3 and q.dropped == 2


def test_an_events_data_that_is_not_its_kinds_is_kept_counted_and_read_for_nothing(
    make_service: Callable[..., Service],
) -> None:
    """A deployment acts on an update event's kind whatever its data; it reads the device's
    health only from data that is the kind's record. An unknown kind and a misfit are stored as
    they came, counted and listed."""
    from edgeops.core import events
    from edgeops.service import api_types as t
    from edgeops.service import rollout_policy as ro

    s = make_service(public_url="https://fleet.example:8480")
    sent: list[Any] = []
    s.rollouts.send = sent.extend
    now = time.time()
    for dev in ("typed", "odd"):
        status = wire.Status(device=dev, boot="b", seq=0, sent=now, online=True)
        s.handle(topics.status(FLEET, dev), wire.encode(status))
    policy = ro.RolloutPolicy(stages=(100.0,), min_devices=1, bake=3600.0)
    dep = s.rollouts.create("digits", "1.0.0", FLEET, devices=["typed", "odd"], policy=policy)
    s.rollouts.tick(dep["id"])
    assert sorted(a.device for a in sent) == ["odd", "typed"]

    health = events.HealthOutcome(
        predictions=25,
        errors=0,
        p95_ms=1.5,
        latency_ratio=None,
        ratio_basis="samples",
        error_rate=0,
    )
    odd_health = {**msgspec.to_builtins(health), "predictions": "plenty"}
    answers = [
        (
            "typed",
            "update-committed",
            events.to_data(events.UpdateCommitted(version="1.0.0", at="health", health=health)),
        ),
        ("odd", "update-committed", {"version": "1.0.0", "at": "health", "health": odd_health}),
        ("odd", "firmware-flashed", {"slot": "b", "nested": {"ok": [1, 2]}}),
    ]
    for seq, (dev, kind, data) in enumerate(answers, start=1):
        ev = wire.Event(
            device=dev,
            boot="b",
            seq=seq,
            sent=time.time(),
            kind=kind,
            command_id=f"{dep['id']}/{dev}/u",
            data=data,
        )
        s.handle(topics.events(FLEET, dev), wire.encode(ev))
    assert s.counters.stored_events == 3
    assert s.counters.untyped_events == 2  # the misfit and the unknown kind
    assert t.typed(s.stats(), t.Stats).untyped_events == 2

    s.rollouts.tick(dep["id"])
    states = {d["device"]: d for d in s.rollouts.status(dep["id"])["device_states"]}
    assert states["typed"]["state"] == states["odd"]["state"] == ro.COMMITTED
    assert states["typed"]["health"] == msgspec.to_builtins(health)
    assert states["odd"]["health"] is None  # nothing read from data that does not fit
    stored = {e["kind"]: e["data"] for e in s.store.telemetry.events_of(FLEET, "odd")}
    assert stored == {"update-committed": answers[1][2], "firmware-flashed": answers[2][2]}
