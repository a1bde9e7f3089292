"""Signed commands through the shipped broker configuration (TLS, accounts, the ACL): a sender
with the service's broker account but not its command key cannot command a device. Forged,
expired, replayed and foreign commands are refused with their reason; the counter survives a
restart; two trusted keys let the command key rotate without touching the device again."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.agent import Agent
from device_agent.config import (
    AgentConfig,
    CommandsConfig,
    DeviceConfig,
    HttpConfig,
    ModelConfig,
    MqttConfig,
    TelemetryConfig,
    TlsConfig,
)
from edgeops.core import wire
from edgeops.core.errors import UsageError
from edgeops.core.signing import generate_keypair, load_signing_key
from edgeops.testing import (
    SERVICE_ACCOUNT,
    Collector,
    FleetBroker,
    TestPki,
    command,
    find_mosquitto,
    send_command,
)

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

FLEET = "signed"
DEVICES = {f"sc-{i}": uuid.uuid4().hex for i in range(4)}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    with FleetBroker(tmp_path_factory.mktemp("fleet-broker"), DEVICES) as b:
        yield b


def agent_config(
    b: FleetBroker, device: str, tmp: Path, bundle: Path, bundle_pub: Path, **commands: Any
) -> AgentConfig:
    """A device connected as itself over TLS, trusting ``bundle_pub`` for bundles."""
    return AgentConfig(
        device=DeviceConfig(id=device, fleet=FLEET),
        model=ModelConfig(store=tmp / "store", bundle=bundle, trusted_keys=(bundle_pub,)),
        telemetry=TelemetryConfig(window_seconds=60),
        mqtt=MqttConfig(
            host="127.0.0.1",
            port=b.tls_port,
            username=device,
            password=DEVICES[device],
            tls=TlsConfig(ca=b.ca.cert),
            outbox=tmp / "outbox.db",
            keepalive=5,
        ),
        http=HttpConfig(enabled=False),
        commands=CommandsConfig(**commands),
    )


def watch(b: FleetBroker, tmp: Path) -> Collector:
    """The devices' events, read as the service account."""
    cert = b.issue(f"watcher-{uuid.uuid4().hex[:6]}")
    pki = TestPki(b.ca.cert, cert.cert, cert.key, cert.cert, cert.key)
    return Collector(
        b.tls_port,
        client_id=f"w-{uuid.uuid4().hex[:8]}",
        tls=pki,
        username=SERVICE_ACCOUNT,
        password=b.accounts[SERVICE_ACCOUNT],
    )


class Answers:
    """Sends commands as the service account and waits for the event that answers each."""

    def __init__(self, b: FleetBroker, seen: Collector, device: str) -> None:
        self.ops = b.settings(SERVICE_ACCOUNT)
        self.seen = seen
        self.device = device

    def __call__(self, cmd: wire.Command | bytes, command_id: str | None = None) -> wire.Event:
        if isinstance(cmd, wire.Command):
            command_id = cmd.id

        def answers(c: Collector) -> list[wire.Event]:
            with c._lock:
                return [
                    e for e in c.events if e.command_id == command_id and e.device == self.device
                ]

        before = len(answers(self.seen))
        send_command(self.ops, cmd, fleet=FLEET, device=self.device)
        assert self.seen.wait_for(lambda c: len(answers(c)) > before, 15), command_id
        return answers(self.seen)[before]


def tampered(cmd: wire.Command, **changes: Any) -> bytes:
    """``cmd``'s payload with fields changed after it was signed."""
    data = json.loads(wire.encode(cmd))
    data.update(changes)
    return json.dumps(data).encode()


def test_forged_expired_replayed_and_foreign_commands_are_refused_with_their_reason(
    broker: FleetBroker,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    dev = "sc-0"
    cfg = agent_config(
        broker,
        dev,
        tmp_path,
        digits_bundles[0],
        signing_keys[1],
        trusted_keys=(command_keys[1],),
    )
    key = load_signing_key(command_keys[0])
    rogue = load_signing_key(generate_keypair(tmp_path / "rogue", "rogue")[0])
    now = time.time()

    def signed(args: wire.CommandArgs, **kw: Any) -> wire.Command:
        return command(dev, args, fleet=FLEET, key=key, **kw)

    with watch(broker, tmp_path) as seen:
        agent = Agent(cfg).start()
        try:
            assert agent.link is not None and agent.link.wait_connected(10), agent.link.problem
            answer = Answers(broker, seen, dev)
            ok = signed(wire.PingArgs())
            assert answer(ok).kind == "ping-done"
            quiet = wire.SetConfigArgs(window_seconds=3600, sample_rate=0.0)
            late = signed(quiet, issued=now - 600, lifetime=60)
            early = signed(quiet, issued=now + 3600)
            unsigned_rollback = command(dev, wire.RollbackArgs(version="0.1"), fleet=FLEET)
            forged = [
                (command(dev, quiet, fleet=FLEET), "unsigned"),
                (command(dev, quiet, fleet=FLEET, key=rogue), "unknown key"),
                (unsigned_rollback, "unsigned"),
                (command("sc-1", quiet, fleet=FLEET, key=key), "foreign device"),
                (command(dev, quiet, fleet="elsewhere", key=key), "foreign fleet"),
                (late, "expired"),
                (early, "from the future"),
                (ok, "replayed"),  # the same bytes again
            ]
            for cmd, reason in forged:
                ev = answer(cmd)
                assert ev.kind == "command-rejected", (reason, ev.kind, ev.message)
                assert ev.data == {"reason": reason, "kind": cmd.kind}, ev.data
                assert ev.level == "error" and len(ev.message) < 300
            # A signed command changed after signing: its counter, its arguments.
            good = signed(quiet)
            for changes in (
                {"counter": good.counter + 1},
                {"args": {"kind": "set-config", "sample_rate": 0.0, "window_seconds": 1}},
                {"device": "sc-1"},  # retargeted: published to sc-0 anyway
            ):
                ev = answer(tampered(good, **changes), good.id)
                assert (ev.kind, ev.data["reason"]) == ("command-rejected", "bad signature")
            # Nothing above was carried out.
            assert agent.config.telemetry.window_seconds == 60
            assert agent.config.telemetry.sample_rate == 1.0
            assert agent.model is not None and agent.model.ref.version == "1.0.0"
            assert answer(signed(wire.PingArgs())).kind == "ping-done"
        finally:
            agent.stop()
        # The last counter is on disk: after a restart the same command is still a replay.
        again = Agent(cfg).start()
        try:
            assert again.link is not None and again.link.wait_connected(10)
            answer = Answers(broker, seen, dev)
            replay = answer(ok)
            assert (replay.kind, replay.data["reason"]) == ("command-rejected", "replayed")
            assert answer(signed(wire.PingArgs())).kind == "ping-done"
        finally:
            again.stop()
    assert json.loads((tmp_path / "store" / "commands.json").read_text())["device"] == dev


def test_two_trusted_keys_rotate_the_command_key_without_reflashing(
    broker: FleetBroker,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    dev = "sc-2"
    keys = tmp_path / "command-keys"  # a directory of trusted .pub files on the device
    old_key, _ = generate_keypair(keys, "old")
    new_key, _ = generate_keypair(keys, "new")
    old, new = load_signing_key(old_key), load_signing_key(new_key)
    for private in (old_key, new_key):  # private keys stay with the service
        private.rename(tmp_path / private.name)
    cfg = agent_config(
        broker, dev, tmp_path, digits_bundles[0], signing_keys[1], trusted_keys=(keys,)
    )
    with watch(broker, tmp_path) as seen:
        with Agent(cfg) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            answer = Answers(broker, seen, dev)
            assert answer(command(dev, wire.PingArgs(), fleet=FLEET, key=old)).kind == "ping-done"
            assert answer(command(dev, wire.PingArgs(), fleet=FLEET, key=new)).kind == "ping-done"
        # The old key is retired: its .pub leaves the device's directory.
        (keys / "old.pub").unlink()
        with Agent(cfg) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            answer = Answers(broker, seen, dev)
            ev = answer(command(dev, wire.PingArgs(), fleet=FLEET, key=old))
            assert (ev.kind, ev.data["reason"]) == ("command-rejected", "unknown key")
            assert answer(command(dev, wire.PingArgs(), fleet=FLEET, key=new)).kind == "ping-done"


def test_development_mode_is_explicit_and_said_out_loud(
    broker: FleetBroker,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    dev = "sc-3"
    cfg = agent_config(broker, dev, tmp_path, digits_bundles[0], signing_keys[1])
    with watch(broker, tmp_path) as seen:
        # By default an agent trusts no command key: it refuses every command.
        with Agent(cfg) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            ev = Answers(broker, seen, dev)(command(dev, wire.PingArgs(), fleet=FLEET))
            assert (ev.kind, ev.data["reason"]) == ("command-rejected", "unsigned")
        dev_mode = replace(cfg, commands=CommandsConfig(allow_unsigned=True))
        with Agent(dev_mode) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            answer = Answers(broker, seen, dev)
            assert answer(command(dev, wire.PingArgs(), fleet=FLEET)).kind == "ping-done"
            rogue = load_signing_key(command_keys[0])  # signed, but by a key it does not trust
            ev = answer(command(dev, wire.PingArgs(), fleet=FLEET, key=rogue))
            assert (ev.kind, ev.data["reason"]) == ("command-rejected", "unknown key")
            assert agent.predict(np.zeros((8, 8))).model.version == "1.0.0"
        modes = [e.data["commands"] for e in seen.events_of("started") if e.device == dev]
        assert modes[-1] == "development: unsigned commands accepted"
        assert modes[0] == "signed by one of 0 trusted key(s)"
    # A key trusted for bundles cannot also be the command key.
    both = replace(cfg, commands=CommandsConfig(trusted_keys=(signing_keys[1],)))
    with pytest.raises(UsageError, match="bundle key"):
        Agent(both).start()
