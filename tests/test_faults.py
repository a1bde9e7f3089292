"""Fault runs at demo size: the ``make demo`` fleet (12 simulated devices on 1.0.0) gets a
staged rollout of 1.1.0 while something breaks underneath it.

- the broker is stopped for 20 s in the middle of the rollout, then started again on the same
  port (its persistence keeps the sessions and what they had queued);
- the service, an ``edgeops serve`` process, is killed with SIGKILL during a stage's bake and
  started again on the same database and port.

Each time the rollout completes, every device ends on 1.1.0, and every telemetry window is
stored exactly once: per device the stored windows tile its time without a gap, every window a
device closed (seen through :attr:`Agent.on_window`) is stored with its count, and the stored
counts add up to the predictions the simulator made on it.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from edgeops.core import topics, wire
from edgeops.service import storage
from edgeops.service.config import ServiceConfig
from edgeops.service.report import get, post
from edgeops.service.rollout_policy import RolloutPolicy
from edgeops.service.server import Service
from edgeops.service.storage import schema
from edgeops.simulate import Fleet, FleetConfig
from edgeops.testing import (
    Mosquitto,
    find_mosquitto,
    free_port,
    make_api_token,
    window_order_problems,
)

DEVICES = 12
"""The demo's fleet (``python -m edgeops.demo --devices``)."""
RATE = 10.0
"""Predictions per second per device."""
WINDOW = 1.0
"""Telemetry window, seconds."""
OUTAGE = 20.0
"""How long the broker stays down."""
SERVICE_DOWN = 5.0
"""How long the killed service stays dead before it is started again."""
POLICY = RolloutPolicy(
    stages=(10, 50, 100),  # 2, 6 and 12 of the 12 devices
    bake=5.0,
    timeout=120.0,  # update commands expire at half of it: well past the outage
    min_devices=2,
    health_predictions=10,
    health_seconds=5.0,
    resend=5.0,
)
NEW = "digits 1.1.0"

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")


# --- helpers -----------------------------------------------------------------------------------


def until(cond: Callable[[], bool], timeout: float, what: Callable[[], object]) -> None:
    """Poll ``cond`` until it holds; fail with ``what()`` (the state to diagnose) otherwise."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what()}")
        time.sleep(0.2)


def fleet_config(
    broker_port: int, bundle: Path, pub: Path, fleet: str, *, command_pub: Path, service_url: str
) -> FleetConfig:
    """The demo's fleet: devices trusting the bundle key ``pub`` and the service's command key
    ``command_pub``, downloading from ``service_url``, with the policy's health window as their
    floors."""
    return FleetConfig(
        devices=DEVICES,
        bundle=bundle,
        broker=f"mqtt://127.0.0.1:{broker_port}",
        fleet=fleet,
        rate=RATE,
        window_seconds=WINDOW,
        trusted_keys=(pub,),
        command_keys=(command_pub,),
        service_url=service_url,
        health_predictions=POLICY.health_predictions or 1,
        health_seconds=POLICY.health_seconds or 1.0,
        prefix="dev",
    )


def await_subscription(broker_port: int, statuses: Callable[[], int]) -> None:
    """Wait until the service has subscribed: a retained status of a probe device (in a fleet
    of its own) reaches it. Devices start only then, so none of their windows precedes the
    service's session."""
    import paho.mqtt.publish as publish
    from paho.mqtt.client import MQTTv5

    probe = wire.Status(device="probe", boot="probe", seq=1, sent=time.time(), online=False)
    publish.single(
        topics.status("probe", "probe"),
        wire.encode(probe),
        qos=1,
        retain=True,
        hostname="127.0.0.1",
        port=broker_port,
        protocol=MQTTv5,
    )
    until(lambda: statuses() >= 1, 30, lambda: "the service has not subscribed")


class Closed:
    """Every window the fleet's agents close from now on (put in their outboxes), with its
    count: the ground truth the stored windows are compared with."""

    def __init__(self, fleet: Fleet) -> None:
        self.windows: dict[tuple[str, str, int], int] = {}
        self._lock = threading.Lock()
        for agent in fleet.agents:
            agent.on_window = self._add

    def _add(self, t: wire.Telemetry) -> None:
        with self._lock:
            self.windows[(t.device, t.boot, t.seq)] = t.count


@dataclass(frozen=True)
class Window:
    device: str
    boot: str
    seq: int
    window_start: float
    window_end: float
    count: int
    errors: int
    version: str | None


def stored_windows(engine: sa.Engine, fleet: str) -> list[Window]:
    w = schema.windows.c
    q = (
        sa.select(
            w.device,
            w.boot,
            w.seq,
            w.window_start,
            w.window_end,
            w["count"],
            w.errors,
            w.model_version,
        )
        .where(w.fleet == fleet)
        .order_by(w.device, w.boot, w.seq)
    )
    with engine.connect() as conn:
        return [Window(*r) for r in conn.execute(q)]


class PredictionsNotCounted(AssertionError):
    """Every window reached the service, but on devices that switched models the windows
    count fewer predictions than the simulator made: the agent lost them before it closed
    the window."""


def window_problems(
    rows: list[Window], served: dict[str, int], closed: Closed
) -> tuple[list[str], list[str], dict[str, Any]]:
    """What is wrong with the stored windows of a fleet that served ``served`` predictions
    per device: windows lost or stored twice, then predictions missing from the windows of
    devices that switched models. Both empty when nothing is lost or counted twice."""
    problems = window_order_problems(rows)  # in seq order, times never go back
    uncounted: list[str] = []
    by_device: dict[str, list[Window]] = {}
    for r in rows:
        by_device.setdefault(r.device, []).append(r)
    stored = {(r.device, r.boot, r.seq): r for r in rows}
    for key, count in sorted(closed.windows.items()):
        got = stored.get(key)
        if got is None:
            problems.append(f"window {key} (count {count}) was closed but is not stored")
        elif got.count != count:
            problems.append(f"window {key} was closed with count {count}, stored with {got.count}")
    for device, n in sorted(served.items()):
        ws = by_device.get(device, [])
        boots = {w.boot for w in ws}
        if len(boots) != 1:
            problems.append(f"{device}: windows of {len(boots)} boots (the agent never restarted)")
        for a, b in itertools.pairwise(ws):
            # Consecutive windows tile the device's time: the next opens where the last closed.
            # A gap of a window's length is a window lost (overlaps: window_order_problems).
            gap = b.window_start - a.window_end
            if a.boot == b.boot and not gap < WINDOW / 2:
                problems.append(
                    f"{device}: seq {a.seq} ends at {a.window_end:.3f}, seq {b.seq} starts at "
                    f"{b.window_start:.3f} ({gap:+.3f} s)"
                )
        total = sum(w.count for w in ws)
        switches = sum(a.version != b.version for a, b in itertools.pairwise(ws))
        # Known to the agent's loss at a switch only if every window of the device was seen
        # closed (so stored) and it did switch: then the windows were short of counts before
        # they left the device.
        seen_all = bool(ws) and (ws[0].device, ws[0].boot, ws[0].seq) in closed.windows
        line = f"{device}: the simulator made {n} predictions, its windows count {total}"
        if total > n or (total < n and not (switches and seen_all)):
            problems.append(line)
        elif total < n:
            uncounted.append(f"{line} ({n - total} missing; {switches} model switch(es))")
    measured = {
        "windows": len(rows),
        "counted": sum(w.count for w in rows),
        "window_errors": sum(w.errors for w in rows),
        "closed_seen": len(closed.windows),
        "first_window_seen": sum(
            (ws[0].device, ws[0].boot, ws[0].seq) in closed.windows for ws in by_device.values()
        ),
        "windows_per_device": sorted({len(ws) for ws in by_device.values()}),
    }
    return problems, uncounted, measured


def fleet_state(fleet: Fleet) -> list[str]:
    return [
        f"{s.device}: {s.model}, {'online' if s.online else 'OFFLINE'}, "
        f"outbox {s.outbox_pending}, {s.predictions} ok/{s.errors} err"
        + (f" ({s.last_error})" if s.last_error else "")
        for s in fleet.stats()
    ]


def deployment_state(status: dict[str, Any]) -> str:
    devices = ", ".join(
        f"{d['device']}[{d['stage'] + 1}]={d['state']}" for d in status["device_states"]
    )
    history = "; ".join(what for _, _, what in status["history"])
    return (
        f"{status['id']} {status['state']} stage {status['stage'] + 1}/{status['stages']} "
        f"({status.get('reason')}); devices: {devices}; history: {history}"
    )


def drained(fleet: Fleet) -> bool:
    """Every device online with nothing waiting in its outbox."""
    return all(s.online and s.outbox_pending == 0 for s in fleet.stats())


def stop_fleet(fleet: Fleet) -> dict[str, int]:
    """Stop the fleet (each agent closes its last window and drains its outbox); the
    predictions each device served."""
    fleet.stop()
    return {s.device: s.predictions for s in fleet.stats()}


def check_windows(
    engine: sa.Engine,
    fleet: str,
    served: dict[str, int],
    closed: Closed,
    fault: tuple[float, float],
) -> None:
    """Wait for the service to store every window the devices closed, then check them all.
    ``fault`` is when the fault began and ended (unix times): windows closed meanwhile waited
    in the devices' outboxes or the broker's queue, and must be stored like the rest."""

    def missing() -> int:
        with engine.connect() as conn:
            w = schema.windows.c
            rows = conn.execute(sa.select(w.device, w.boot, w.seq).where(w.fleet == fleet))
            have = {tuple(r) for r in rows}
        return len(set(closed.windows) - have)

    until(lambda: missing() == 0, 30, lambda: f"{missing()} windows closed but not stored")
    rows = stored_windows(engine, fleet)
    problems, uncounted, measured = window_problems(rows, served, closed)
    measured["closed_during_the_fault"] = sum(fault[0] <= w.window_end <= fault[1] for w in rows)
    print(f"\n{fleet}: the simulator made {sum(served.values())} predictions; stored {measured}")
    assert not problems, "\n".join(problems[:40])
    assert measured["closed_during_the_fault"] >= DEVICES, measured  # the fault did matter
    if uncounted:
        raise PredictionsNotCounted("\n".join(uncounted))


# --- the broker goes away ----------------------------------------------------------------------


def test_a_broker_down_for_20_s_mid_rollout_loses_no_window_and_the_rollout_completes(
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    old, new = digits_bundles
    name = "faults-broker"
    t0 = time.monotonic()
    with Mosquitto(directory=tmp_path / "mosquitto") as broker:
        cfg = ServiceConfig(
            broker=f"mqtt://127.0.0.1:{broker.port}",
            db=f"sqlite:///{tmp_path / 'service.db'}",
            http_port=0,
            bundles=(old, new),
            trusted_keys=(signing_keys[1],),
            command_key=command_keys[0],
            fleet_interval=3600.0,
            rollout_interval=0.2,
        )
        with Service(cfg) as service:
            assert service.connected.wait(15), "the service cannot reach the broker"
            await_subscription(broker.port, lambda: service.counters.statuses)
            fleet = Fleet(
                fleet_config(
                    broker.port,
                    old,
                    signing_keys[1],
                    name,
                    command_pub=command_keys[1],
                    service_url=service.public_url(),
                )
            )

            def known() -> bool:
                return {d["device"] for d in service.store.devices.all(name)} >= set(
                    fleet.device_ids
                )

            def status() -> dict[str, Any]:
                return service.rollouts.status(dep["id"])

            try:
                fleet.start()
                closed = Closed(fleet)
                until(known, 30, lambda: fleet_state(fleet))
                dep = service.deploy("digits-1.1.0", name, devices=fleet.device_ids, policy=POLICY)
                until(
                    lambda: any("baking" in h[2] for h in status()["history"]),
                    60,
                    lambda: deployment_state(status()),
                )
                at_stop = status()
                t_down, down_at = time.monotonic(), time.time()
                broker.stop()
                # The fault took: the service and every device lost the broker.
                until(
                    lambda: not service.connected.is_set() and fleet.online == 0,
                    15,
                    lambda: fleet_state(fleet),
                )
                time.sleep(max(0.0, OUTAGE - (time.monotonic() - t_down)))
                during = status()
                broker.start()
                t_up, up_at = time.monotonic(), time.time()
                until(
                    lambda: service.connected.is_set() and fleet.online == DEVICES,
                    60,
                    lambda: fleet_state(fleet),
                )
                t_back = time.monotonic()
                until(
                    lambda: status()["state"] in ("completed", "aborted"),
                    90,
                    lambda: (deployment_state(status()), fleet_state(fleet)),
                )
                t_done = time.monotonic()
                final = status()
                assert final["state"] == "completed", (deployment_state(final), fleet_state(fleet))
                states = {d["state"] for d in final["device_states"]}
                assert states == {"committed"}, deployment_state(final)
                until(lambda: drained(fleet), 30, lambda: fleet_state(fleet))
                served = stop_fleet(fleet)
            finally:
                fleet.stop()
            versions = {s.device: s.model for s in fleet.stats()}
            assert set(versions.values()) == {NEW}, versions
            print(
                f"\noutage {t_up - t_down:.1f} s, from '{at_stop['history'][-1][2]}' to "
                f"'{during['history'][-1][2]}' ({during['counts']}); every device back "
                f"{t_back - t_up:.1f} s after the broker, the rollout completed "
                f"{t_done - t_up:.1f} s after the broker came back, {t_done - t0:.1f} s after "
                "the start"
            )
            check_windows(service.engine_db, name, served, closed, (down_at, up_at))
            print(f"service: {service.counters.as_dict()}")


# --- the service is killed ---------------------------------------------------------------------


def test_a_service_killed_mid_rollout_resumes_it_and_loses_no_window(
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    old, new = digits_bundles
    name = "faults-kill"
    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    log = tmp_path / "service.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()

    def log_tail() -> str:
        return log.read_text()[-3000:] if log.exists() else ""

    def serve(broker_port: int) -> subprocess.Popen[bytes]:
        """``edgeops serve`` on the same database, port and (so) MQTT session."""
        with log.open("ab") as err:
            p = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "edgeops",
                    "serve",
                    "--broker",
                    f"mqtt://127.0.0.1:{broker_port}",
                    "--db",
                    db_url,
                    "--http-port",
                    str(port),
                    "--group",
                    name,
                    "--pubkey",
                    str(signing_keys[1]),
                    "--command-key",
                    str(command_keys[0]),
                    "--bundle",
                    str(old),
                    "--bundle",
                    str(new),
                ],
                stderr=err,
            )
        until(lambda: _answers(url) or p.poll() is not None, 60, log_tail)
        assert p.poll() is None, log_tail()
        return p

    def known() -> bool:
        devices = get(url, "/v1/fleet", fleet=name)["devices"]
        return {d["device"] for d in devices} >= set(fleet.device_ids)

    def status() -> dict[str, Any]:
        result: dict[str, Any] = get(url, f"/v1/deployments/{dep['id']}")
        return result

    monkeypatch.setenv("EDGEOPS_TOKEN", make_api_token(db_url, "deploy"))  # for get and post
    with Mosquitto(directory=tmp_path / "mosquitto") as broker:
        p = serve(broker.port)
        engine = storage.connect(db_url)
        fleet = Fleet(
            fleet_config(
                broker.port,
                old,
                signing_keys[1],
                name,
                command_pub=command_keys[1],
                service_url=url,
            )
        )
        try:
            await_subscription(broker.port, lambda: int(get(url, "/v1/stats")["statuses"]))
            fleet.start()
            closed = Closed(fleet)
            until(known, 30, lambda: fleet_state(fleet))
            request = {
                "bundle": "digits-1.1.0",
                "fleet": name,
                "devices": list(fleet.device_ids),
                "policy": POLICY.to_dict(),
            }
            dep = post(url, "/v1/deployments", request)
            until(
                lambda: any("stage 2 done" in h[2] for h in status()["history"]),
                60,
                lambda: deployment_state(status()),
            )
            at_kill = status()
            t_kill, killed_at = time.monotonic(), time.time()
            os.kill(p.pid, signal.SIGKILL)  # stage 2 baking: 6 devices on 1.1.0, 6 to go
            p.wait()
            time.sleep(SERVICE_DOWN)
            p = serve(broker.port)
            t_up, up_at = time.monotonic(), time.time()
            until(
                lambda: status()["state"] in ("completed", "aborted"),
                90,
                lambda: (deployment_state(status()), fleet_state(fleet), log_tail()),
            )
            t_done = time.monotonic()
            final = status()
            assert final["state"] == "completed", (deployment_state(final), log_tail())
            states = {d["state"] for d in final["device_states"]}
            assert states == {"committed"}, deployment_state(final)
            until(lambda: drained(fleet), 30, lambda: fleet_state(fleet))
            served = stop_fleet(fleet)
            versions = {s.device: s.model for s in fleet.stats()}
            assert set(versions.values()) == {NEW}, versions
            print(
                f"\nkilled at '{at_kill['history'][-1][2]}' ({at_kill['counts']}); answering "
                f"again {t_up - t_kill:.1f} s later; completed {t_done - t_up:.1f} s after "
                f"that, {t_done - t0:.1f} s after the start"
            )
            check_windows(engine, name, served, closed, (killed_at, up_at))
            print(f"restarted service: {get(url, '/v1/stats')}")
        finally:
            fleet.stop()
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            engine.dispose()


def _answers(url: str) -> bool:
    try:
        get(url, "/v1/deployments")
    except Exception:
        return False
    return True
