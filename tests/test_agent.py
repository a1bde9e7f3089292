"""The device agent against a real mosquitto: serving, telemetry, outages, restarts, commands."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.agent import Agent
from device_agent.client import AgentClient
from device_agent.config import (
    AgentConfig,
    CommandsConfig,
    DeviceConfig,
    HttpConfig,
    ModelConfig,
    MqttConfig,
    TelemetryConfig,
    UpdateConfig,
    load_config,
)
from device_agent.serving import ServedModel
from edgeops.core import errors, wire
from edgeops.core.errors import EdgeOpsError
from edgeops.core.signing import load_signing_key
from edgeops.testing import Collector, Mosquitto, command, send_command, window_order_problems
from edgeops.trainer.run import Run

FLEET = "test"


@pytest.fixture(scope="module")
def digits_xy(digits_run: Run) -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits_run.split("test")) as z:
        return z["x"], z["y"]


def make_config(
    tmp: Path,
    port: int,
    bundle: Path,
    keys: tuple[Path, Path],
    *,
    device: str | None = None,
    window: float = 0.5,
    http: bool = False,
    commands: tuple[Path, Path] | None = None,
    service_url: str | None = None,
    allowed_hosts: tuple[str, ...] = (),
) -> AgentConfig:
    """A device of fleet FLEET; ``commands``: the command key pair it trusts; downloads from
    ``service_url``'s host or ``allowed_hosts``; health floors of 5 predictions or 1 s, so that
    tests' commands set the window."""
    return AgentConfig(
        device=DeviceConfig(id=device or f"dev-{uuid.uuid4().hex[:8]}", fleet=FLEET),
        model=ModelConfig(store=tmp / "store", bundle=bundle, trusted_keys=(keys[1],)),
        telemetry=TelemetryConfig(window_seconds=window),
        mqtt=MqttConfig(port=port, outbox=tmp / "outbox.db", keepalive=5),
        http=HttpConfig(enabled=http, port=0),
        commands=CommandsConfig(trusted_keys=() if commands is None else (commands[1],)),
        update=UpdateConfig(
            service_url=service_url,
            allowed_hosts=allowed_hosts,
            health_predictions=5,
            health_seconds=1.0,
        ),
    )


def _count(c: Collector, device: str) -> int:
    return sum(t.count for t in c.telemetry if t.device == device)


def test_serves_and_reports_over_mqtt(
    broker: Mosquitto, digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_xy
    cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys, window=30)
    dev = cfg.device.id
    with Collector(broker.port, client_id=f"c-{dev}") as seen:
        with Agent(cfg) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            one = agent.predict(x[0])  # one sample, no batch dimension
            assert len(one.ids) == 1 and one.predicted[0] in agent.model.labels  # type: ignore[union-attr]
            batch = agent.predict(x[1:20])
            assert len(batch.ids) == 19 and batch.outputs[0].shape == (19, 10)
            raw = agent.predict(x[:2], raw=True)
            assert raw.outputs[0].dtype == np.int8  # the int8 model's own output tensor
            for pid, label in zip(batch.ids, y[1:20], strict=True):
                assert agent.feedback(pid, str(label))
            assert not agent.feedback("no-such-id", "3")
            with pytest.raises(errors.InputDataError, match="shape"):
                agent.predict(np.zeros((3, 9, 9)))
            with pytest.raises(errors.InputDataError, match="NaN"):
                agent.predict(np.full((8, 8), np.nan))
            window = agent.flush_window()
            assert window is not None and window.count == 22 and window.bad_inputs == 2
        assert seen.wait_for(lambda c: any(not s.online for s in c.status if s.device == dev), 10)
        assert seen.wait_for(lambda c: _count(c, dev) == 22, 10)

    (t,) = [t for t in seen.telemetry if t.device == dev and t.count]
    assert t.model is not None and t.model.version == "1.0.0"
    assert t.feedback.total == 19 and t.feedback.correct >= 17
    assert t.latency.count == 3  # one latency per call
    assert t.errors == 0
    (classes,) = [o for o in t.outputs if isinstance(o, wire.ClassOutputWindow)]
    assert sum(classes.class_counts) == 22
    names = {i.name for i in t.inputs}
    assert any("mean" in n for n in names) and any("std" in n for n in names)
    assert all(
        sum(i.counts) + i.missing == 22 for i in t.inputs if isinstance(i, wire.NumericWindow)
    )
    online = [s for s in seen.status if s.device == dev and s.online]
    assert online and online[0].model is not None and online[0].model.name == "digits"
    started = [e for e in seen.events if e.device == dev and e.kind == "started"]
    assert started and seen.duplicates == 0


def test_broker_outage_loses_no_window(
    digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_xy
    with Mosquitto(directory=tmp_path / "broker") as broker:
        cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys, window=0.3)
        dev = cfg.device.id
        served = 0
        stop = threading.Event()

        def load(agent: Agent) -> None:
            nonlocal served
            i = 0
            while not stop.is_set():
                agent.predict(x[i % len(x)])
                served += 1
                i += 1
                time.sleep(0.005)

        with Collector(broker.port, client_id=f"c-{dev}") as seen:
            agent = Agent(cfg).start()
            assert agent.link is not None and agent.link.wait_connected(10)
            worker = threading.Thread(target=load, args=(agent,))
            worker.start()
            time.sleep(1.0)
            broker.stop()  # several windows go to the outbox meanwhile
            time.sleep(2.0)
            assert agent.outbox is not None and agent.outbox.stats().pending >= 3
            broker.start()
            time.sleep(1.0)
            stop.set()
            worker.join()
            agent.stop()
            assert seen.wait_for(lambda c: _count(c, dev) == served, 30), (
                _count(seen, dev),
                served,
            )
        windows = [t for t in seen.telemetry if t.device == dev]
        keys = [(t.boot, t.seq) for t in windows]
        assert len(keys) == len(set(keys))
        # The windows tile time: each starts where the previous ended.
        assert window_order_problems(windows) == []
        ordered = sorted(windows, key=lambda t: t.seq)
        for a, b in itertools.pairwise(ordered):
            assert b.window_start == pytest.approx(a.window_end)


def test_restart_with_a_full_outbox_drains(
    digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_xy
    broker = Mosquitto(directory=tmp_path / "broker")  # not started yet: the agent is offline
    cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys, window=60)
    dev = cfg.device.id
    first = Agent(cfg).start()
    for i in range(5):
        first.predict(x[i : i + 2])
        first.flush_window()
    first_boot = first.boot
    first.stop()
    with broker, Collector(broker.port, client_id=f"c-{dev}") as seen:
        second = Agent(cfg).start()
        assert seen.wait_for(lambda c: _count(c, dev) == 10, 20)
        second.stop()
    boots = {t.boot for t in seen.telemetry if t.device == dev and t.count}
    assert boots == {first_boot}
    assert seen.events_of("stopped")


def _send(port: int, device: str, cmd: wire.Command | bytes) -> None:
    send_command(port, cmd, fleet=FLEET, device=device)


class Signer:
    """Makes commands to one device as the service does: signed by the command key."""

    def __init__(self, keys: tuple[Path, Path], device: str) -> None:
        self.key = load_signing_key(keys[0])
        self.device = device

    def __call__(self, args: wire.CommandArgs, **kw: Any) -> wire.Command:
        return command(self.device, args, fleet=FLEET, key=self.key, **kw)


def test_commands(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    command_keys,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    cfg = make_config(
        tmp_path, broker.port, digits_bundles[0], signing_keys, window=30, commands=command_keys
    )
    dev = cfg.device.id
    cmd = Signer(command_keys, dev)
    with Collector(broker.port, client_id=f"c-{dev}") as seen, Agent(cfg) as agent:
        assert agent.link is not None and agent.link.wait_connected(10)

        def reply(kind: str, sent: wire.Command | bytes) -> wire.Event:
            before = len(seen.events_of(kind))
            _send(broker.port, dev, sent)
            assert seen.wait_for(lambda c: len(c.events_of(kind)) > before, 10), kind
            return seen.events_of(kind)[-1]

        assert seen.wait_for(lambda c: bool(c.events_of("started")), 10)
        assert seen.events_of("started")[-1].data["commands"] == "signed by one of 1 trusted key(s)"
        ping = cmd(wire.PingArgs())
        assert reply("ping-done", ping).command_id == ping.id
        done = reply("set-config-done", cmd(wire.SetConfigArgs(window_seconds=5, sample_rate=0.5)))
        assert done.data == {"window_seconds": 5.0, "sample_rate": 0.5}
        assert agent.config.telemetry.window_seconds == 5.0
        # Well-formed but hostile values are refused where the command is read, each with the
        # field that is wrong, and nothing is applied.
        good = json.loads(wire.encode(cmd(wire.SetConfigArgs(sample_rate=0.2))))
        for args, where in [
            ({"window_seconds": 0.001}, "window_seconds"),  # a telemetry flood
            ({"window_seconds": 1e12}, "window_seconds"),  # telemetry silenced
            ({"sample_rate": 0.2, "window_seconds": -5}, "window_seconds"),
            ({"sample_rate": 1.5}, "sample_rate"),
            ({"window_seconds": "soon"}, "window_seconds"),
            ({"outbox_max_bytes": 1}, "unknown field"),
            ({}, "needs window_seconds or sample_rate"),
        ]:
            bad = json.dumps({**good, "args": {"kind": "set-config", **args}}).encode()
            refused = reply("command-rejected", bad)
            assert refused.data["reason"] == "bad field", (args, refused.message)
            assert where in refused.message and len(refused.message) < 300
        assert (agent.config.telemetry.window_seconds, agent.config.telemetry.sample_rate) == (
            5.0,
            0.5,
        )
        assert reply("command-rejected", b"{not json").data["reason"] == "not json"
        future = b'{"type":"command","schema":"9.0","id":"x","kind":"ping","issued":0}'
        assert reply("command-rejected", future).data["reason"] == "unknown major version"
        nothing = reply("rollback-failed", cmd(wire.RollbackArgs(version="0.9.0")))
        assert "no previous model" in nothing.message
        # Install and switch to 1.1.0, then roll back to 1.0.0 by command.
        assert agent.store is not None
        newer = agent.store.install_file(digits_bundles[1])
        agent.store.activate(newer.id)
        # A conditional rollback (a rollout's) of a model that is not current changes nothing.
        skip = reply("rollback-done", cmd(wire.RollbackArgs(version="1.0.0", from_sha256="0" * 64)))
        assert skip.data == {"changed": False, "model": "digits", "version": "1.1.0"}
        # A rollback names the version it goes back to: another is refused.
        wrong = reply("rollback-failed", cmd(wire.RollbackArgs(version="0.9.0")))
        assert wrong.data == {"reason": "not the previous version", "previous": "1.0.0"}
        assert agent.store.current().version == "1.1.0"  # type: ignore[union-attr]
        back = wire.RollbackArgs(version="1.0.0", from_sha256=newer.model_sha256)
        done = reply("rollback-done", cmd(back))
        assert done.data == {"changed": True, "model": "digits", "version": "1.0.0"}
        assert agent.model is not None and agent.model.ref.version == "1.0.0"
        assert agent.predict(np.zeros((8, 8))).model.version == "1.0.0"
    assert seen.rejected == []


def test_local_http_api(
    broker: Mosquitto, digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, y = digits_xy
    cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys, http=True)
    with Agent(cfg, mqtt=False) as agent, AgentClient(agent.http.address) as client:
        assert client.health()["status"] == "ok"
        info = client.model()
        assert info["name"] == "digits" and info["labels"][:2] == ["0", "1"]
        result = client.predict(x[:3].tolist())
        assert len(result["ids"]) == 3 and len(result["outputs"][0]) == 3
        fb = client.feedback([(result["ids"][0], str(y[0])), ("unknown", "1")])
        assert fb == {"accepted": 1, "unknown": 1}
        with pytest.raises(errors.InputDataError, match="shape"):
            client.predict([[1, 2, 3]])
        with pytest.raises(errors.InputDataError, match="exactly one"):
            client._call("POST", "/v1/predict", {"nothing": 1})
        assert client.health()["status"] == "ok"  # still serving


def test_unix_socket_and_replay_cli(
    cli,
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    data_files,
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "agent.sock"
    cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys, http=True)
    cfg = replace(cfg, http=HttpConfig(unix_socket=sock))
    with Agent(cfg, mqtt=False) as agent:
        r = cli(
            "agent",
            "replay",
            data_files["digits"],
            "--rate",
            500,
            "--limit",
            40,
            "--url",
            f"unix:{sock}",
        )
        assert r.code == 0, r.err
        assert "sent 40 rows" in r.out and "40 ok" in r.out and "40 labels sent back" in r.out
        window = agent.flush_window()
        assert window is not None and window.count == 40 and window.feedback.total == 40


def test_config_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "agent.toml"
    f.write_text(
        '[device]\nid = "pi-7"\nfleet = "lab"\nlabels = { site = "bench" }\n'
        '[model]\nstore = "models"\n[telemetry]\nwindow_seconds = 5\n'
        '[mqtt]\nhost = "broker.local"\n[mqtt.tls]\nca = "ca.pem"\n'
    )
    cfg = load_config(f, env={"EDGEOPS_AGENT_MQTT_PORT": "8883", "EDGEOPS_AGENT_LOG_JSON": "true"})
    assert cfg.device.id == "pi-7" and cfg.device.labels == {"site": "bench"}
    assert cfg.model.store == tmp_path / "models"
    assert cfg.mqtt.port == 8883 and cfg.mqtt.host == "broker.local" and cfg.log.json
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca == tmp_path / "ca.pem"
    assert cfg.telemetry.window_seconds == 5.0
    for text, message in [
        ("[mqtt]\nport = 'x'\n", "mqtt.port must be an integer"),
        ("[mqtt]\nprt = 1\n", "unknown key(s) in [mqtt]: prt"),
        ("[nope]\n", "unknown section"),
        ("[device]\nid = 'a/b'\n", "config"),
        ("[telemetry]\nsample_rate = 2\n", "sample_rate"),
        ("not toml = = 1", "not valid TOML"),
    ]:
        f.write_text(text)
        with pytest.raises(errors.UsageError, match=re.escape(message)):
            load_config(f, env={})
    with pytest.raises(errors.UsageError, match="names no config section"):
        load_config(None, env={"EDGEOPS_AGENT_NOPE_X": "1"})


def test_daemon_stops_cleanly_on_sigterm(
    broker: Mosquitto, digits_bundles: tuple[Path, Path], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    dev = f"daemon-{uuid.uuid4().hex[:6]}"
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[device]\nid = "{dev}"\nfleet = "{FLEET}"\n'
        f'[model]\nstore = "store"\nbundle = "{digits_bundles[0]}"\n'
        f'trusted_keys = ["{signing_keys[1]}"]\n'
        '[telemetry]\nwindow_seconds = 60\n[mqtt]\noutbox = "outbox.db"\n'
        f'[http]\nunix_socket = "{tmp_path / "a.sock"}"\n'
    )
    env = {**os.environ, "EDGEOPS_AGENT_MQTT_PORT": str(broker.port)}
    with Collector(broker.port, client_id=f"c-{dev}") as seen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeops", "agent", "run", "--config", str(conf), "--json-logs"],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert seen.wait_for(
                lambda c: any(s.online for s in c.status if s.device == dev), 30
            ), "no birth"
            with AgentClient(f"unix:{tmp_path / 'a.sock'}") as client:
                client.predict(np.zeros((2, 8, 8)).tolist())
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert seen.wait_for(lambda c: any(not s.online for s in c.status if s.device == dev), 10)
        assert seen.wait_for(lambda c: _count(c, dev) == 2, 10)
        assert any(e.kind == "stopped" for e in seen.events if e.device == dev)
    logs = proc.stderr.read() if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    # Every line is a JSON record, LiteRT's own lines (XNNPACK, absl) included.
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("started" in r["message"] for r in records)


def test_agent_modules_never_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import device_agent.agent, device_agent.daemon, device_agent.http_api, device_agent.link\n"
        "import device_agent.client, device_agent.replay, device_agent.store, edgeops.cli.agent\n"
        "import device_agent.updater\n"
        "heavy = ('tensorflow', 'keras', 'converters', 'tf2onnx', 'onnx')\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in heavy or m.startswith('edgeops.trainer')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_full_outbox_drops_oldest_and_says_so(
    digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_xy
    broker = Mosquitto(directory=tmp_path / "broker")  # offline for the first boot
    cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys, window=60)
    cfg = replace(cfg, mqtt=replace(cfg.mqtt, outbox_max_messages=4))
    dev = cfg.device.id
    agent = Agent(cfg).start()
    for i in range(8):
        agent.predict(x[i])
        agent.flush_window()
    assert agent.outbox is not None
    stats = agent.outbox.stats()
    assert stats.pending == 4 and stats.dropped == 5  # "started" and the 4 oldest windows
    agent.stop()
    with broker, Collector(broker.port, client_id=f"c-{dev}") as seen:
        again = Agent(cfg).start()
        again.predict(x[:3])
        again.flush_window()
        assert seen.wait_for(lambda c: any(t.count == 3 for t in c.telemetry), 20)
        again.stop()
    latest = max((t for t in seen.telemetry if t.device == dev), key=lambda t: t.sent)
    assert latest.outbox.dropped >= 5


def test_a_model_switch_under_load_counts_every_prediction_once(
    digits_bundles: tuple[Path, Path], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Predictions running while the model is switched are counted in the old model's window
    or the new one's, never in neither."""
    cfg = make_config(tmp_path, 1, digits_bundles[0], signing_keys, window=3600)
    agent = Agent(cfg, mqtt=False, http=False).start()
    closed: list[wire.Telemetry] = []
    agent.on_window = closed.append
    served = [0, 0]
    stop = threading.Event()
    x = np.random.default_rng(0).uniform(0, 16, (8, 8)).astype(np.float32)

    def feed(i: int) -> None:
        while not stop.is_set():
            agent.predict(x)
            served[i] += 1

    threads = [threading.Thread(target=feed, args=(i,)) for i in range(2)]
    try:
        for t in threads:
            t.start()
        assert agent.store is not None and agent.model is not None
        entries = [agent.store.current(), agent.store.install_file(digits_bundles[1])]
        for k in range(20):
            entry = entries[(k + 1) % 2]
            assert entry is not None
            agent.switch_to(ServedModel(entry))
            time.sleep(0.01)
        stop.set()
        for t in threads:
            t.join()
        agent.flush_window()
    finally:
        stop.set()
        agent.stop()
    assert sum(w.count for w in closed) == sum(served) > 0
    assert window_order_problems(closed) == []


def test_a_switch_and_the_timer_close_windows_in_seq_order(
    digits_bundles: tuple[Path, Path], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The race a model switch had with the window timer, driven in its bad order: the switch
    swaps in the new model, then waits for a prediction still running on the old one; the timer
    closes the new window meanwhile. The old window must still come out first, with the lower
    seq, and the two must tile time."""
    cfg = make_config(tmp_path, 1, digits_bundles[0], signing_keys, window=3600)
    agent = Agent(cfg, mqtt=False, http=False).start()
    closed: list[wire.Telemetry] = []
    agent.on_window = closed.append
    old = agent.model
    assert old is not None and agent.store is not None
    entered, release = threading.Event(), threading.Event()
    run = old.run

    def slow_run(x: np.ndarray, *, raw: bool = False) -> list[np.ndarray]:
        entered.set()
        release.wait(30)
        return run(x, raw=raw)

    old.run = slow_run  # type: ignore[method-assign]
    newer = ServedModel(agent.store.install_file(digits_bundles[1]))
    x = np.zeros((8, 8), dtype=np.float32)
    threads = [
        threading.Thread(target=agent.predict, args=(x,)),
        threading.Thread(target=agent.switch_to, args=(newer,)),
        threading.Thread(target=agent.flush_window),  # the timer's close
    ]
    try:
        threads[0].start()
        assert entered.wait(30), "the prediction did not start"
        threads[1].start()
        deadline = time.monotonic() + 30
        while agent.model is old and time.monotonic() < deadline:
            time.sleep(0.001)
        assert agent.model is newer, "the switch did not happen"
        agent.predict(x)  # on the new model, in the new window
        threads[2].start()
        threads[2].join(timeout=1.0)  # blocked behind the switch (or done, were it racing)
        release.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        release.set()
        agent.stop()
    assert window_order_problems(closed) == []
    first, second, *rest = sorted(closed, key=lambda w: w.seq)  # then the stop's, empty
    versions = [w.model.version if w.model else None for w in (first, second, *rest)]
    assert versions == ["1.0.0"] + ["1.1.0"] * (1 + len(rest))
    assert (first.count, second.count, sum(w.count for w in rest)) == (1, 1, 0)
    assert second.window_start == first.window_end  # they tile exactly


def test_a_failed_start_releases_what_it_opened(
    digits_bundles: tuple[Path, Path], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.bundle"
    bad.write_bytes(digits_bundles[0].read_bytes()[:-10])  # truncated: fails verification
    cfg = make_config(tmp_path, 1, bad, signing_keys, http=True)
    before = {t.name for t in threading.enumerate()}
    agent = Agent(cfg, mqtt=False)
    with pytest.raises(EdgeOpsError):
        agent.start()
    time.sleep(0.2)
    left = {t.name for t in threading.enumerate()} - before
    assert not left, left
    assert agent.outbox is not None
    with pytest.raises(sqlite3.ProgrammingError):  # closed
        agent.outbox.put("t", b"x")
