"""Over-the-air updates against a real mosquitto and a real HTTP server: every state, every
refusal, the health gate's rollback, and kill -9 at the worst moments."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from device_agent.agent import Agent
from device_agent.client import AgentClient
from device_agent.updater import HealthGate, HealthReport, judge
from edgeops.core import wire
from edgeops.core.bundle import Bundle
from edgeops.testing import Collector, Mosquitto, write_bad_bundles
from tests.test_agent import FLEET, Signer, _send, make_config

UPDATE_STATES = ["downloading", "verifying", "staged", "switching", "health"]


# --- a file server that honours Range, drops connections, or trickles -------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """``/NAME`` serves a file; ``/hop/NAME`` redirects to ``/NAME`` on the same host,
    ``/away/NAME`` to ``/NAME`` on ``localhost`` (another host name); ``/flaky/NAME`` sends half
    of it and hangs up unless asked for a range; ``/slow/NAME`` trickles it out at about
    20 KB/s; ``/trickle/NAME`` sends 64 bytes a tenth of a second until the server stops (or the
    client goes), never all of it."""

    server: _FileServer

    def do_GET(self) -> None:
        mode, _, name = self.path.lstrip("/").rpartition("/")
        if mode in ("hop", "away"):
            self.server.requests.append((self.path, None))
            host = (
                self.server.host if mode == "hop" else f"localhost:{self.server.server_address[1]}"
            )
            self.send_response(302)
            self.send_header("Location", f"http://{host}/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            data = (self.server.root / name).read_bytes()
        except OSError:
            self.send_error(404)
            return
        self.server.requests.append((self.path, self.headers.get("Range")))
        start = 0
        rng = self.headers.get("Range")
        if rng is not None:
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(m[1]) if m else 0
            if start >= len(data):
                self.send_error(416)
                return
        body = data[start:]
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if mode == "flaky" and rng is None:
                self.wfile.write(body[: len(body) // 2])
            elif mode == "slow":
                for i in range(0, len(body), 1024):
                    if self.server.stopping.is_set():
                        return
                    self.wfile.write(body[i : i + 1024])
                    time.sleep(0.05)
            elif mode == "trickle":
                for i in range(0, len(body) - 64, 64):
                    if self.server.stopping.wait(0.1):
                        return
                    self.wfile.write(body[i : i + 64])
                    self.wfile.flush()
                self.server.stopping.wait()
            else:
                self.wfile.write(body)
        except OSError:  # the agent went away (killed): fine
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _FileServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.stopping = threading.Event()

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: what a device must allow to download from this server."""
        return f"127.0.0.1:{self.server_address[1]}"

    def url(self, name: str, mode: str = "", *, host: str | None = None) -> str:
        return f"http://{host or self.host}/{mode + '/' if mode else ''}{name}"


@pytest.fixture(scope="module")
def files(
    tmp_path_factory: pytest.TempPathFactory, digits_bundles: tuple[Path, Path], signing_keys
) -> Iterator[_FileServer]:  # type: ignore[no-untyped-def]
    """The file server, holding the 1.1.0 bundle and two bad variants of it."""
    root = tmp_path_factory.mktemp("www")
    shutil.copy(digits_bundles[1], root / "good.bundle")
    shutil.copy(digits_bundles[0], root / "old.bundle")
    write_bad_bundles(root, digits_bundles[1], signing_keys, tmp_path_factory.mktemp("rogue"))
    server = _FileServer(root)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.stopping.set()
    server.shutdown()
    server.server_close()


def _args(server: _FileServer, name: str, mode: str = "", **health: Any) -> wire.UpdateArgs:
    """The arguments of an update to the bundle ``name`` on ``server``, as a rollout sends
    them (its model's name and version)."""
    path = server.root / name
    data = path.read_bytes()
    with Bundle.open(path) as b:
        manifest = b.manifest
    return wire.UpdateArgs(
        url=server.url(name, mode),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        name=manifest["name"],
        version=manifest["version"],
        health=wire.HealthArgs(**health),
    )


def _update(
    sign: Signer, server: _FileServer, name: str, mode: str = "", **health: Any
) -> wire.Command:
    return sign(_args(server, name, mode, **health))


def _updates(seen: Collector, cmd_id: str) -> list[wire.Event]:
    with seen._lock:
        return [e for e in seen.events if e.command_id == cmd_id and e.kind.startswith("update-")]


def _wait(seen: Collector, cmd_id: str, kind: str, timeout: float = 30) -> wire.Event:
    ok = seen.wait_for(lambda c: any(e.kind == kind for e in _updates(c, cmd_id)), timeout)
    assert ok, (kind, [(e.kind, e.message) for e in _updates(seen, cmd_id)])
    return next(e for e in _updates(seen, cmd_id) if e.kind == kind)


def _final(seen: Collector, cmd_id: str, timeout: float = 30) -> wire.Event:
    final = ("update-committed", "update-rolled-back", "update-failed")
    ok = seen.wait_for(lambda c: any(e.kind in final for e in _updates(c, cmd_id)), timeout)
    assert ok, [(e.kind, e.message) for e in _updates(seen, cmd_id)]
    return next(e for e in _updates(seen, cmd_id) if e.kind in final)


def _answer(seen: Collector, port: int, device: str, cmd: wire.Command) -> wire.Event:
    """Send ``cmd``; the event that answers it."""
    _send(port, device, cmd)
    answered = seen.wait_for(lambda c: any(e.command_id == cmd.id for e in c.events), 15)
    assert answered, f"{cmd.kind} was not answered"
    return next(e for e in seen.events if e.command_id == cmd.id)


def _models(agent: Agent) -> list[str]:
    assert agent.store is not None
    return sorted(d.name.split("-")[1] for d in (agent.store.root / "models").iterdir())


# --- the health verdict, on its own --------------------------------------------------------------


def test_health_verdict() -> None:
    gate = HealthGate(max_error_rate=0.05, max_p95_ms=10.0, max_latency_ratio=1.5)
    ok = HealthReport(predictions=100, errors=1, p95_ms=2.0, latency_ratio=1.2, ratio_basis="x")
    assert judge(gate, ok) is None
    errors = HealthReport(95, 5, 2.0, 1.0, "traffic")
    assert "error rate 0.050" not in (judge(gate, errors) or "")  # 5 % is allowed
    assert "error rate" in (judge(gate, HealthReport(90, 10, 2.0, 1.0, "traffic")) or "")
    assert "budget" in (judge(gate, HealthReport(10, 0, 11.0, 1.0, "traffic")) or "")
    assert "1.60x" in (judge(gate, HealthReport(10, 0, 2.0, 1.6, "samples")) or "")
    assert judge(HealthGate(None, None, None, None, None), HealthReport(0, 9, 99, 9, "x")) is None


# --- updates in process ----------------------------------------------------------------------


def test_good_update_goes_through_every_state(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path,
        broker.port,
        digits_bundles[0],
        signing_keys,
        window=60,
        commands=command_keys,
        allowed_hosts=(files.host,),
    )
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)
        # "flaky" hangs up half way: the download resumes with a Range request.
        # The latency ratio is loose here: this test is about the states, and the two formats'
        # latencies on a loaded 2-core host vary; the gate itself is tested below.
        cmd = _update(sign, files, "good.bundle", "flaky", predictions=20, max_latency_ratio=20.0)
        _send(broker.port, dev, cmd)
        _wait(seen, cmd.id, "update-health")
        assert agent.model is not None and agent.model.ref.version == "1.1.0"
        other = _update(sign, files, "good.bundle")
        _send(broker.port, dev, other)
        refused = _final(seen, other.id)
        assert refused.kind == "update-failed" and "another update" in refused.message
        x = np.zeros((8, 8), np.float32)
        while agent.updater is not None and agent.updater.busy:
            agent.predict(x)
            time.sleep(0.005)
        committed = _final(seen, cmd.id)
        assert committed.kind == "update-committed", committed.message
        assert agent.predict(x).model.version == "1.1.0"
        assert seen.wait_for(
            lambda c: any(
                s.online and s.model is not None and s.model.version == "1.1.0"
                for s in c.status
                if s.device == dev
            ),
            10,
        )
    kinds = [e.kind.removeprefix("update-") for e in _updates(seen, cmd.id)]
    assert kinds == [*UPDATE_STATES, "committed"]
    assert committed.data["health"]["predictions"] >= 20
    assert all(e.data["version"] == "1.1.0" for e in _updates(seen, cmd.id)[2:])
    ranges = [r for p, r in files.requests if p.startswith("/flaky/")]
    assert ranges[0] is None and ranges[1] is not None and ranges[1].startswith("bytes=")
    assert _models(agent) == ["1.0.0", "1.1.0"]  # the previous model stays until next commit
    state = json.loads((tmp_path / "store" / "update.json").read_text())
    assert state["state"] == "committed" and state["reported"] is True
    assert not any((tmp_path / "store" / "downloads").iterdir())


def test_bad_updates_fail_and_leave_the_model_alone(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path,
        broker.port,
        digits_bundles[0],
        signing_keys,
        window=60,
        commands=command_keys,
        allowed_hosts=(files.host,),
    )
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    good = _args(files, "good.bundle")
    cases = [
        (_args(files, "rogue.bundle"), "verifying", "not a trusted key"),
        (msgspec.structs.replace(good, sha256="0" * 64), "verifying", "sha256"),
        (_args(files, "corrupt.bundle"), "staged", "sample outputs differ"),
        (msgspec.structs.replace(good, size=10**12), "request", "larger than the limit"),
        (
            msgspec.structs.replace(good, size=good.size - 1),
            "downloading",
            "larger than the expected",
        ),
        (msgspec.structs.replace(good, url=files.url("nothing.bundle")), "downloading", "HTTP 404"),
    ]
    ids = []
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)
        for args, at, why in cases:
            cmd = sign(args)  # numbered when sent, as the service does
            ids.append(cmd.id)
            _send(broker.port, dev, cmd)
            ev = _final(seen, cmd.id)
            assert ev.kind == "update-failed" and why in ev.message, (at, ev.message)
            assert ev.data.get("at", "request") == at, ev.data
            assert agent.predict(np.zeros((8, 8))).model.version == "1.0.0"
            assert _models(agent) == ["1.0.0"]
    kinds = [e.kind for e in _updates(seen, ids[2])]
    assert kinds == [f"update-{s}" for s in ("downloading", "verifying", "staged", "failed")]
    assert not any((tmp_path / "store" / "downloads").iterdir())


def test_health_gate_failure_rolls_back(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path,
        broker.port,
        digits_bundles[0],
        signing_keys,
        window=60,
        commands=command_keys,
        allowed_hosts=(files.host,),
    )
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)
        cmd = _update(sign, files, "good.bundle", predictions=15, seconds=20, max_p95_ms=1e-6)
        _send(broker.port, dev, cmd)
        _wait(seen, cmd.id, "update-health")
        x = np.zeros((8, 8), np.float32)
        while agent.updater is not None and agent.updater.busy:
            agent.predict(x)
            time.sleep(0.005)
        ev = _final(seen, cmd.id)
        assert ev.kind == "update-rolled-back" and "budget" in ev.message
        assert ev.data["serving"] == "1.0.0" and ev.data["health"]["predictions"] >= 15
        assert agent.predict(x).model.version == "1.0.0"
        assert agent.store is not None and agent.store.current() is not None
        assert agent.store.current().version == "1.0.0"  # type: ignore[union-attr]
        assert _models(agent) == ["1.0.0"]
        assert seen.wait_for(
            lambda c: (
                [s.model.version for s in c.status if s.device == dev and s.model][-1] == "1.0.0"
            ),
            10,
        )


# --- the device's update policy ---------------------------------------------------------------


def test_the_device_policy_refuses_downgrades_other_models_and_hosts_and_clamps_the_gate(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """Updates go forward in version, to this device's model, from allowed hosts only, under a
    health gate no looser than the device's; going back takes a signed rollback naming the
    version."""
    cfg = make_config(
        tmp_path,
        broker.port,
        digits_bundles[0],
        signing_keys,
        window=60,
        http=True,  # its own local API: downloads from it are refused
        commands=command_keys,
        allowed_hosts=(files.host,),
    )
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)
        good = _args(files, "good.bundle")
        own_api = f"{agent.http.address}/v1/model"
        refused = [
            (msgspec.structs.replace(good, name="wine"), "model", "allowed_models"),
            (msgspec.structs.replace(good, url=own_api), "local api", "own local API"),
            (
                msgspec.structs.replace(good, url=files.url("good.bundle", host="localhost:9")),
                "host",
                "not allowed",
            ),
            (msgspec.structs.replace(good, version="1.0.0"), "downgrade", "not above"),
            (msgspec.structs.replace(good, version="2024-05-01"), "version", "PEP 440"),
        ]
        for args, reason, why in refused:
            ev = _answer(seen, broker.port, dev, sign(args))
            assert ev.kind == "update-failed" and why in ev.message, (reason, ev.message)
            assert ev.data == {"at": "request", "reason": reason}
        # A redirect to another host is refused where it happens; one on the same host is not.
        before = len(files.requests)
        away = _answer(seen, broker.port, dev, sign(_args(files, "good.bundle", "away")))
        away = _final(seen, away.command_id or "")
        assert away.data["at"] == "downloading" and "redirected" in away.message, away.message
        assert [path for path, _ in files.requests[before:]] == ["/away/good.bundle"]
        # Loose health settings are clamped to the device's floors (error rate 5 %), and said so.
        loose = _args(
            files, "good.bundle", "hop", predictions=10, max_error_rate=0.9, max_latency_ratio=20.0
        )
        up = sign(loose)
        _send(broker.port, dev, up)
        downloading = _wait(seen, up.id, "update-downloading")
        assert downloading.data["clamped"] == ["max_error_rate"]
        health = _wait(seen, up.id, "update-health")
        assert health.data["max_error_rate"] == 0.05 and health.data["max_latency_ratio"] == 20.0
        x = np.zeros((8, 8), np.float32)
        while agent.updater is not None and agent.updater.busy:
            agent.predict(x)
            time.sleep(0.005)
        assert _final(seen, up.id).kind == "update-committed"
        # Now on 1.1.0: an update back to 1.0.0 is a downgrade, refused before any download...
        old = _args(files, "old.bundle")
        down = _answer(seen, broker.port, dev, sign(old))
        assert down.kind == "update-failed" and down.data["reason"] == "downgrade", down
        # ...and a command that names a newer version for the old bundle fails on the bundle's
        # signed manifest.
        lie = sign(msgspec.structs.replace(old, version="1.2.0"))
        _send(broker.port, dev, lie)
        ev = _final(seen, lie.id)
        assert ev.data["at"] == "verifying" and "not digits 1.2.0" in ev.message, ev.message
        assert agent.predict(x).model.version == "1.1.0"
        # A signed rollback naming the previous version goes back.
        back = _answer(seen, broker.port, dev, sign(wire.RollbackArgs(version="1.0.0")))
        assert back.kind == "rollback-done" and back.data["version"] == "1.0.0", back
        assert agent.predict(x).model.version == "1.0.0"


# --- slow downloads ----------------------------------------------------------------------------


def test_ping_and_rollback_are_answered_during_a_slow_download(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """A server that trickles a bundle out does not wedge the device: the download runs off
    the command thread, so other commands are answered meanwhile; stopping the agent ends it."""
    cfg = make_config(
        tmp_path,
        broker.port,
        digits_bundles[0],
        signing_keys,
        window=60,
        commands=command_keys,
        allowed_hosts=(files.host,),
    )
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    with Collector(broker.port, client_id=f"c-{dev}") as seen:
        with Agent(cfg) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            slow = _update(sign, files, "good.bundle", "trickle")
            _send(broker.port, dev, slow)
            _wait(seen, slow.id, "update-downloading")
            pong = _answer(seen, broker.port, dev, sign(wire.PingArgs()))
            assert pong.kind == "ping-done", pong
            refused = _answer(seen, broker.port, dev, sign(wire.RollbackArgs(version="1.0.0")))
            assert refused.kind == "rollback-failed", refused
            assert "an update is in progress" in refused.message
            again = sign(slow.args, id=slow.id)  # a rollout's repeat: a new counter
            _send(broker.port, dev, again)
            assert [e.kind for e in _updates(seen, slow.id)] == ["update-downloading"]
            assert agent.updater is not None and agent.updater.busy  # still downloading
            assert agent.predict(np.zeros((8, 8))).model.version == "1.0.0"
        ev = _final(seen, slow.id)
    assert ev.kind == "update-failed" and ev.message == "the agent is stopping", ev
    assert ev.data["at"] == "downloading"


def test_a_download_past_its_deadline_fails_and_leaves_the_model_alone(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path,
        broker.port,
        digits_bundles[0],
        signing_keys,
        window=60,
        commands=command_keys,
        allowed_hosts=(files.host,),
    )
    cfg = replace(cfg, update=replace(cfg.update, download_seconds=2.0))
    dev = cfg.device.id
    sign = Signer(command_keys, dev)
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)
        slow = _update(sign, files, "good.bundle", "trickle")
        _send(broker.port, dev, slow)
        ev = _final(seen, slow.id)
        assert ev.kind == "update-failed" and ev.data["at"] == "downloading", ev
        assert ev.message.startswith("the download did not finish within 2 s ("), ev.message
        assert agent.predict(np.zeros((8, 8))).model.version == "1.0.0"
        assert _models(agent) == ["1.0.0"]
        assert not any((tmp_path / "store" / "downloads").iterdir())
        deadline = time.monotonic() + 10
        while agent.updater is not None and agent.updater.busy and time.monotonic() < deadline:
            time.sleep(0.01)  # the update thread ends just after its last event
        assert agent.updater is not None and not agent.updater.busy
        assert _answer(seen, broker.port, dev, sign(wire.PingArgs())).kind == "ping-done"


# --- kill -9 ---------------------------------------------------------------------------------


def test_kill_during_health_and_download_restarts_into_the_committed_model(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    dev = f"kill-{uuid.uuid4().hex[:6]}"
    sock = tmp_path / "a.sock"
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[device]\nid = "{dev}"\nfleet = "{FLEET}"\n'
        f'[model]\nstore = "store"\nbundle = "{digits_bundles[0]}"\n'
        f'trusted_keys = ["{signing_keys[1]}"]\n'
        '[telemetry]\nwindow_seconds = 60\n[mqtt]\noutbox = "outbox.db"\n'
        f'[http]\nunix_socket = "{sock}"\n'
        f'[commands]\ntrusted_keys = ["{command_keys[1]}"]\n'
        f'[update]\nallowed_hosts = ["{files.host}"]\nhealth_predictions = 5\n'
        "health_seconds = 1.0\n"
    )
    env = {**os.environ, "EDGEOPS_AGENT_MQTT_PORT": str(broker.port)}
    procs: list[subprocess.Popen[bytes]] = []
    sign = Signer(command_keys, dev)

    def start(seen: Collector) -> subprocess.Popen[bytes]:
        before = len([s for s in seen.status if s.device == dev and s.online])
        with (tmp_path / "agent.log").open("ab") as logfile:
            p = subprocess.Popen(
                [sys.executable, "-m", "edgeops", "agent", "run", "--config", str(conf)],
                env=env,
                stderr=logfile,
            )
        procs.append(p)
        online = lambda c: len([s for s in c.status if s.device == dev and s.online]) > before  # noqa: E731
        assert seen.wait_for(online, 30), "no birth"
        return p

    def serving() -> str:
        with AgentClient(f"unix:{sock}") as client:
            return str(client.predict(np.zeros((1, 8, 8)).tolist())["model"]["version"])

    def kill(p: subprocess.Popen[bytes]) -> None:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        sock.unlink(missing_ok=True)

    try:
        with Collector(broker.port, client_id=f"c-{dev}") as seen:
            p = start(seen)
            cmd = _update(sign, files, "good.bundle", seconds=120)
            _send(broker.port, dev, cmd)
            _wait(seen, cmd.id, "update-health")
            assert serving() == "1.1.0"
            kill(p)
            p = start(seen)
            ev = _final(seen, cmd.id)
            assert ev.kind == "update-rolled-back"
            assert ev.message == "interrupted during health window"
            assert serving() == "1.0.0"

            slow = _update(sign, files, "good.bundle", "slow", seconds=120)
            _send(broker.port, dev, slow)
            _wait(seen, slow.id, "update-downloading")
            time.sleep(0.5)
            assert any((tmp_path / "store" / "downloads").iterdir())  # a partial download
            kill(p)
            p = start(seen)
            ev = _final(seen, slow.id)
            assert ev.kind == "update-failed" and ev.message == "interrupted at downloading"
            assert serving() == "1.0.0"
            assert not (tmp_path / "store" / "downloads").exists()
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=30) == 0
        state = json.loads((tmp_path / "store" / "update.json").read_text())
        assert state["state"] == "failed" and state["at"] == "downloading" and state["reported"]
        models = sorted(d.name for d in (tmp_path / "store" / "models").iterdir())
        assert len(models) == 1 and models[0].startswith("digits-1.0.0-")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
