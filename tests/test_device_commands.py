"""``edgeops fleet ping`` and ``edgeops fleet set-config``: a real service signs and publishes
the command through a real mosquitto, real agents carry it out (or refuse it), and the CLI
prints the device's answer, by its printed text and exit code."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from device_agent.agent import Agent
from edgeops.core import errors
from edgeops.core.signing import generate_keypair
from edgeops.service.config import ServiceConfig
from edgeops.service.server import Service
from edgeops.testing import Mosquitto, until
from tests.test_agent import FLEET, make_config


@pytest.fixture(scope="module")
def live(  # type: ignore[no-untyped-def]
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    command_keys: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """A service with its command key and REST API; ``trusting``, an agent that trusts that key;
    ``stranger``, one that trusts another key only."""
    tmp = tmp_path_factory.mktemp("device-commands")
    other = generate_keypair(tmp / "other", "command")
    tag = uuid.uuid4().hex[:6]
    configs = {
        "trusting": make_config(
            tmp / "a", broker.port, digits_bundles[0], signing_keys,
            device=f"cmd-{tag}-a", window=30, commands=command_keys,
        ),
        "stranger": make_config(
            tmp / "b", broker.port, digits_bundles[0], signing_keys,
            device=f"cmd-{tag}-b", window=30, commands=other,
        ),
    }  # fmt: skip
    cfg = ServiceConfig(
        command_key=command_keys[0],
        broker=f"mqtt://127.0.0.1:{broker.port}",
        db=f"sqlite:///{tmp / 'service.db'}",
        group=f"g{tag}",
        http_port=0,
        trusted_keys=(signing_keys[1],),
        fleet_interval=3600.0,
    )
    with Service(cfg) as service:
        agents = {name: Agent(c, http=False).start() for name, c in configs.items()}
        try:
            ids = {c.device.id for c in configs.values()}
            assert until(lambda: {d["device"] for d in service.store.devices.all(FLEET)} >= ids)
            yield {
                "service": service,
                "url": service.http.address,
                "deploy": service.tokens.create("deployer", "deploy"),
                "read": service.tokens.create("reader", "read"),
                "agents": agents,
                "ids": {name: c.device.id for name, c in configs.items()},
            }
        finally:
            for a in agents.values():
                a.stop()


def _run(cli: Any, live: dict[str, Any], *args: object, token: str = "deploy") -> Any:
    return cli("fleet", *args, "--url", live["url"], "--token", live[token])


def _error(err: str) -> str:
    """The CLI's one error line (the agents in this process log to stderr too)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(("error:", "Error:"))]
    assert len(lines) == 1, err
    return lines[0]


def test_ping_is_answered_by_the_device_and_printed(cli, live) -> None:  # type: ignore[no-untyped-def]
    device = live["ids"]["trusting"]
    r = _run(cli, live, "ping", device, "--wait", 20)
    assert r.code == 0, r.err
    assert "ping c-" in r.out and f"to {FLEET}/{device}: ping-done" in r.out
    assert "pong" in r.out and r.out.count("\n") == 1
    r = _run(cli, live, "ping", device, "--fleet", FLEET, "--wait", 20, "--json")
    assert r.code == 0, r.err
    import json

    body = json.loads(r.out)
    assert body["answer"]["kind"] == "ping-done"
    assert body["answer"]["command_id"] == body["sent"]["id"]
    assert body["sent"]["key"] is not None  # signed by the service's command key


def test_set_config_changes_the_devices_window(cli, live) -> None:  # type: ignore[no-untyped-def]
    device, agent = live["ids"]["trusting"], live["agents"]["trusting"]
    r = _run(cli, live, "set-config", device, "--window-seconds", 12.5, "--sample-rate", 0.5)
    assert r.code == 0, r.err
    assert "set-config-done" in r.out and "window_seconds 12.5" in r.out
    assert agent.config.telemetry.window_seconds == 12.5
    assert agent.config.telemetry.sample_rate == 0.5


def test_a_device_that_does_not_trust_the_key_refuses_and_the_cli_says_why(  # type: ignore[no-untyped-def]
    cli, live
) -> None:
    r = _run(cli, live, "ping", live["ids"]["stranger"], "--wait", 20)
    assert r.code == errors.CommandFailed.exit_code == 21
    line = _error(r.err)
    assert "command-rejected" in line and "unknown key" in line and r.out == ""


def test_bad_requests_get_one_line_and_nothing_is_sent(cli, live) -> None:  # type: ignore[no-untyped-def]
    device = live["ids"]["trusting"]
    service: Service = live["service"]
    before = service.store.counters.next  # a refused request takes no counter
    sent: list[Any] = []
    service.store.counters.next = lambda keys: sent.append(keys) or before(keys)  # type: ignore[method-assign]
    try:
        cases: list[tuple[tuple[object, ...], int, str]] = [
            (("set-config", device), 2, "--window-seconds"),
            (("set-config", device, "--sample-rate", 2), 2, "sample_rate"),
            (("set-config", device, "--window-seconds", 0.5), 2, "window_seconds"),
            (("set-config", device, "--window-seconds", "nan"), 2, "--window-seconds"),
            (("set-config", device, "--sample-rate", "inf"), 2, "--sample-rate"),
            (("ping", "nobody"), 2, "no device 'nobody'"),
            (("ping", device, "--fleet", "elsewhere"), 2, "no device"),
            (("ping", device, "--wait", -1), 2, "--wait"),
        ]
        for args, code, says in cases:
            r = _run(cli, live, *args)
            assert r.code == code, (args, r.out, r.err)
            assert says in _error(r.err), (args, r.err)
        r = _run(cli, live, "ping", device, token="read")
        assert r.code == errors.AccessDenied.exit_code and "needs deploy" in r.err
    finally:
        del service.store.counters.next
    assert sent == []


def test_no_answer_in_time_is_reported_with_the_commands_deadline(  # type: ignore[no-untyped-def]
    cli, live
) -> None:
    """A device that is offline: the command is sent (the broker keeps it for the device's
    session), the CLI says there was no answer and until when the device may act on it."""
    agent: Agent = live["agents"]["trusting"]
    device = live["ids"]["trusting"]
    agent.stop()
    try:
        r = _run(cli, live, "ping", device, "--wait", 1, "--valid-for", 5)
        assert r.code == 21 and "no answer in 1 s" in _error(r.err) and "until" in r.err
        r = _run(cli, live, "ping", device, "--wait", 0)
        assert r.code == 0 and "sent, no answer in 0 s" in r.out
    finally:
        live["agents"]["trusting"] = Agent(agent.config, http=False).start()
