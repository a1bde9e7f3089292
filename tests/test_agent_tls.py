"""The agent's MQTT link over TLS against a real mosquitto: a CA with a user name and password,
client certificates, and brokers that refuse the device or that the device cannot trust."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_agent.agent import Agent
from device_agent.config import AgentConfig, TlsConfig, load_config
from edgeops.testing import Collector, Mosquitto, TestPki, make_test_pki
from edgeops.trainer.run import Run
from tests.test_agent import make_config

OPS_PASSWORDS = {"ops": "ops-pw"}
OPS = {"username": "ops", "password": "ops-pw"}
"""The collector's credentials; brokers without a password file ignore them."""


@pytest.fixture(scope="module")
def digits_xy(digits_run: Run) -> tuple[np.ndarray, np.ndarray]:
    with np.load(digits_run.split("test")) as z:
        return z["x"], z["y"]


@pytest.fixture
def pki(tmp_path: Path) -> TestPki:
    return make_test_pki(tmp_path / "pki")


def _mqtt(cfg: AgentConfig, **changes: Any) -> AgentConfig:
    return replace(cfg, mqtt=replace(cfg.mqtt, **changes))


def _count(c: Collector, device: str) -> int:
    return sum(t.count for t in c.telemetry if t.device == device)


def _online(c: Collector, device: str) -> bool:
    return any(s.online for s in c.status if s.device == device)


def test_ca_and_password_from_the_config_file(
    pki: TestPki, digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_xy
    conf = tmp_path / "agent.toml"
    with Mosquitto(tls=pki, passwords={"agent": "agent s3cret", **OPS_PASSWORDS}) as b:
        conf.write_text(  # "localhost": the server certificate's DNS name
            f'[mqtt]\nhost = "localhost"\nport = {b.port}\nusername = "agent"\nkeepalive = 5\n'
            'outbox = "outbox.db"\n[mqtt.tls]\nca = "pki/ca.crt"\n'
        )
        mqtt = load_config(conf, env={"EDGEOPS_AGENT_MQTT_PASSWORD": "agent s3cret"}).mqtt
        assert mqtt.tls == TlsConfig(ca=pki.ca) and mqtt.password == "agent s3cret"
        cfg = replace(make_config(tmp_path, b.port, digits_bundles[0], signing_keys), mqtt=mqtt)
        dev = cfg.device.id
        with Collector(b.port, client_id=f"c-{dev}", tls=pki, **OPS) as seen:
            with Agent(cfg) as agent:
                assert agent.link is not None and agent.link.wait_connected(10)
                agent.predict(x[:5])
                assert seen.wait_for(lambda c: _online(c, dev) and _count(c, dev) == 5, 10)
                assert agent.health()["mqtt_connected"]
            assert seen.wait_for(lambda c: bool(c.events_of("stopped")), 10)
    assert [e.device for e in seen.events_of("started")] == [dev]
    assert seen.rejected == [] and seen.duplicates == 0


def test_client_certificate(
    pki: TestPki, digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_xy
    with Mosquitto(tls=pki, require_certificate=True) as broker:
        cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys)
        mine = TlsConfig(ca=pki.ca, cert=pki.client_cert, key=pki.client_key)
        cfg = _mqtt(cfg, host="127.0.0.1", tls=mine)  # the server certificate's IP address
        dev = cfg.device.id
        with Collector(broker.port, client_id=f"c-{dev}", tls=pki) as seen, Agent(cfg) as agent:
            assert agent.link is not None and agent.link.wait_connected(10)
            agent.predict(x[:3])
            assert seen.wait_for(lambda c: _online(c, dev) and _count(c, dev) == 3, 10)


@dataclass(frozen=True)
class Refusal:
    """A broker that the agent cannot use, and one on the same port that it can use."""

    refusing: dict[str, Any]
    """``Mosquitto`` arguments."""
    agent: dict[str, Any]
    """``MqttConfig`` changes."""
    fixed: dict[str, Any]


@pytest.fixture(params=["wrong-password", "untrusted-broker", "no-client-certificate"])
def refusal(request: pytest.FixtureRequest, pki: TestPki, tmp_path: Path) -> Refusal:
    ca_only = {"tls": TlsConfig(ca=pki.ca)}
    cases = {
        "wrong-password": Refusal(
            refusing={"tls": pki, "passwords": {"agent": "right", **OPS_PASSWORDS}},
            agent={**ca_only, "username": "agent", "password": "wrong"},
            fixed={"tls": pki, "passwords": {"agent": "wrong", **OPS_PASSWORDS}},
        ),
        "untrusted-broker": Refusal(
            refusing={"tls": make_test_pki(tmp_path / "other-pki")},
            agent=ca_only,
            fixed={"tls": pki},
        ),
        "no-client-certificate": Refusal(
            refusing={"tls": pki, "require_certificate": True},
            agent=ca_only,
            fixed={"tls": pki},
        ),
    }
    return cases[request.param]


def test_a_refusing_or_untrusted_broker_does_not_stop_serving(
    refusal: Refusal, digits_bundles: tuple[Path, Path], signing_keys, digits_xy, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    x, _ = digits_xy
    broker = Mosquitto(**refusal.refusing, directory=tmp_path / "refusing").start()
    cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys)
    cfg = _mqtt(cfg, **refusal.agent)
    dev = cfg.device.id
    agent = Agent(cfg).start()
    try:
        assert agent.link is not None and agent.outbox is not None
        with Collector(broker.port, client_id=f"c-{dev}", tls=broker.tls, **OPS) as refused:
            served = 0
            deadline = time.monotonic() + 1.2  # two windows and a second attempt to connect
            while time.monotonic() < deadline:
                served += len(agent.predict(x[served % len(x)]).ids)
                time.sleep(0.02)
            assert not agent.link.connected and agent.link.connects == 0
            health = agent.health()
            assert health["status"] == "ok" and not health["mqtt_connected"]
            held = {item.topic.rsplit("/", 1)[-1] for item in agent.outbox.pending()}
            assert agent.outbox.stats().pending >= 1 and "telemetry" in held, held
            assert not refused.status and not refused.telemetry and not refused.events
        broker.stop()
        # The same agent, untouched, gets through to a broker that takes it; nothing was lost.
        fixed = Mosquitto(**refusal.fixed, port=broker.port, directory=tmp_path / "fixed")
        with fixed, Collector(fixed.port, client_id=f"c2-{dev}", tls=fixed.tls, **OPS) as seen:
            assert agent.link.connects == 0  # its next attempt is still a second or more away
            served += len(agent.predict(x[:4]).ids)
            agent.flush_window()
            assert agent.link.wait_connected(10)
            assert seen.wait_for(lambda c: _online(c, dev) and _count(c, dev) == served, 10)
            agent.stop()
            assert seen.wait_for(
                lambda c: bool(c.events_of("started") and c.events_of("stopped")), 10
            )
    finally:
        agent.stop()
        broker.stop()


@pytest.mark.parametrize(
    "refusal",
    [
        "wrong-password",
        "untrusted-broker",
        "no-client-certificate",
    ],
    indirect=True,
)
def test_the_agent_says_why_it_cannot_connect(
    refusal: Refusal,
    digits_bundles: tuple[Path, Path],
    signing_keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # type: ignore[no-untyped-def]
    with Mosquitto(**refusal.refusing) as broker:
        cfg = make_config(tmp_path, broker.port, digits_bundles[0], signing_keys)
        cfg = _mqtt(cfg, **refusal.agent)
        with caplog.at_level(logging.WARNING, logger="device_agent.link"), Agent(cfg) as agent:
            assert agent.link is not None and not agent.link.wait_connected(0.5)
            said = [r.getMessage() for r in caplog.records if r.name == "device_agent.link"]
    assert said, "no warning says why the agent does not connect"


@pytest.mark.parametrize("password", ["1234", "true", "2024-01-01"])
def test_a_password_from_the_environment_is_taken_as_given(password: str) -> None:
    env = {"EDGEOPS_AGENT_MQTT_USERNAME": "agent", "EDGEOPS_AGENT_MQTT_PASSWORD": password}
    assert load_config(None, env=env).mqtt.password == password
