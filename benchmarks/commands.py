"""Command benchmark: what signing commands (service) and verifying them (device) cost, next to
the same commands unsigned.

Run::

    python benchmarks/commands.py [--quick | --smoke] [--out benchmarks/results]

What it measures
----------------
Round trip. One process holds a real ``edgeops.testing.Mosquitto``, a real ``Service``
(SQLite, no REST API) and one real ``Agent`` (no model: a ``ping`` needs none; its outbox, MQTT
link and command thread as on a device). The agent trusts the service's command key *and* is in
development mode, so it takes both kinds: a signed ``ping`` has its signature verified, an
unsigned one skips only that. Everything else is the same on both paths: the service numbers
every command in its database (``command_counters``), the agent persists every accepted counter
(write, fsync, rename), answers with a ``ping-done`` event through its outbox. The service sends
with ``Service.send_commands`` (number, sign or not, publish); the clock starts just before that
call and stops when a subscriber in this process receives the ``ping-done`` event carrying the
command's id. Signed and unsigned pings alternate (ABBA), one at a time, ``pings`` of each
(``--quick``: 100, ``--smoke``: 10; full: 300). Reported: the median and p95 of each, and the
ratio of the medians, signed over unsigned.

Twice: as shipped, with TCP_NODELAY on every socket of the path (``set_tcp_nodelay true`` in the
broker's config; the service and the agent set it when they connect, and so does the subscriber
here), and as paho and mosquitto are by default, with it off everywhere. Without it a small write
that follows another before its ACK waits for the peer's delayed ACK (Nagle's algorithm): on
loopback about 40 ms per leg, most of the round trip. The first run shows what a signature costs
against the path itself.

Per command. ``edgeops.core.commands.sign`` (on the service: a round trip through the codec, the
canonical bytes, an ed25519 signature) against ``wire.encode`` of the same command unsigned (what
publishing costs without a signature), and on the device ``wire.decode`` then
``edgeops.core.commands.check`` of a signed command against the same for an unsigned one
(development mode): microseconds per command, the median of ``blocks`` blocks of ``calls`` calls
each (full: 20 blocks of 2000; ``--quick``: 10 of 1000; ``--smoke``: 2 of 100), for a ``ping`` and
for an ``update`` (a rollout's command: URL, sha256, size, name, version, a health gate).

Also checked, as behaviour: every ping of both kinds was answered with ``ping-done`` (none
refused), and a signed command changed after signing (its counter) was refused with
``bad signature``.

How to read it
--------------
Microseconds and milliseconds are from one shared machine; the ratios measured side by side in
the same run matter. The goals are printed last with PASS or FAIL; the script exits 0 when a
goal fails (it reports) and non-zero only if something crashed. Results go to
``<out>/commands.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from bench_report import Goal, elapsed, goal_lines, package_versions, say, write_json_atomic
from bench_smoke import RunMode, add_mode_options, mode_of
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.agent import Agent
from device_agent.config import (
    AgentConfig,
    CommandsConfig,
    DeviceConfig,
    HttpConfig,
    ModelConfig,
    MqttConfig,
)
from edgeops.core import commands, topics, wire
from edgeops.core.signing import SigningKey, generate_keypair, load_signing_key
from edgeops.core.terminal import fmt, render
from edgeops.service.commands import Addressed, CommandDraft, CommandSigner
from edgeops.service.config import ServiceConfig
from edgeops.service.server import Service
from edgeops.testing import Mosquitto

FLEET = "bench-commands"
DEVICE = "cmd-bench-0"
RATIO_GOAL = 1.2
"""The signed round trip's median over the unsigned one's."""
SHARE_GOAL = 0.1
"""Signing plus verifying one command, as a share of the unsigned round trip's median."""


@dataclass(frozen=True)
class Settings:
    quick: bool
    smoke: bool
    out: Path
    pings: int
    blocks: int
    calls: int

    @classmethod
    def of(cls, mode: RunMode, out: Path) -> Settings:
        if mode == "smoke":
            return cls(False, True, out, pings=10, blocks=2, calls=100)
        if mode == "quick":
            return cls(True, False, out, pings=100, blocks=10, calls=1000)
        return cls(False, False, out, pings=300, blocks=20, calls=2000)


# --- per command --------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], object], blocks: int, calls: int) -> float:
    """Microseconds per call: the median over ``blocks`` of each block's mean."""
    fn()  # warm
    means = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        means.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(means)


@dataclass(frozen=True)
class PerCommand:
    kind: str
    payload_bytes: int
    encode_us: float
    """``wire.encode`` of the unsigned command: the baseline on the service."""
    sign_us: float
    """``commands.sign`` (it encodes and decodes once), then ``wire.encode``."""
    decode_check_unsigned_us: float
    """``wire.decode`` then ``commands.check`` of the unsigned command (development mode)."""
    decode_check_signed_us: float

    @property
    def service_ratio(self) -> float:
        return self.sign_us / self.encode_us

    @property
    def device_ratio(self) -> float:
        return self.decode_check_signed_us / self.decode_check_unsigned_us

    @property
    def added_us(self) -> float:
        """What a signature adds to one command, service and device together."""
        return (self.sign_us - self.encode_us) + (
            self.decode_check_signed_us - self.decode_check_unsigned_us
        )


def measure_per_command(key: SigningKey, s: Settings) -> list[PerCommand]:
    keys = {key.key_id: key.verify_key}
    update = wire.UpdateArgs(
        url="https://fleet.example:8480/v1/bundles/" + "ab" * 32,
        sha256="ab" * 32,
        size=1_234_567,
        name="digits",
        version="1.1.0",
        health=wire.HealthArgs(predictions=100, seconds=60.0, max_error_rate=0.05),
    )
    rows = []
    for args in (wire.PingArgs(), update):
        now = time.time()
        cmd = wire.Command(
            id="d20260101000000-abcdef/cmd-bench-0/u",
            fleet=FLEET,
            device=DEVICE,
            issued=now,
            deadline=now + 150.0,
            counter=int(now * 1e6),
            args=args,
        )
        signed = wire.encode(commands.sign(cmd, key))
        plain = wire.encode(cmd)

        def check(payload: bytes, now: float = now) -> commands.Refused | None:
            return commands.check(
                wire.decode(payload, wire.Command),
                keys=keys,
                fleet=FLEET,
                device=DEVICE,
                now=now,
                last_counter=0,
                max_clock_skew=300.0,
                allow_unsigned=True,
            )

        assert check(signed) is None and check(plain) is None
        say(f"per command: {cmd.kind}")
        rows.append(
            PerCommand(
                kind=cmd.kind,
                payload_bytes=len(signed),
                encode_us=per_call_us(lambda c=cmd: wire.encode(c), s.blocks, s.calls),
                sign_us=per_call_us(
                    lambda c=cmd: wire.encode(commands.sign(c, key)), s.blocks, s.calls
                ),
                decode_check_unsigned_us=per_call_us(lambda p=plain: check(p), s.blocks, s.calls),
                decode_check_signed_us=per_call_us(lambda p=signed: check(p), s.blocks, s.calls),
            )
        )
    return rows


# --- round trip ---------------------------------------------------------------------------------


class Answers:
    """A subscriber to the device's events: when each ``ping-done`` and refusal arrived."""

    def __init__(self, port: int) -> None:
        self.arrived: dict[str, tuple[float, wire.Event]] = {}
        self._cond = threading.Condition()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-answers-{uuid.uuid4().hex[:6]}",
            protocol=mqtt.MQTTv5,
        )
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.subscribe(topics.events(FLEET, DEVICE), qos=1)
        c.loop_start()
        self.client = c

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        t = time.perf_counter()
        ev = wire.decode(msg.payload, wire.Event)
        if ev.command_id is None:
            return
        with self._cond:
            self.arrived.setdefault(ev.command_id, (t, ev))
            self._cond.notify_all()

    def wait(self, command_id: str, timeout: float = 10.0) -> tuple[float, wire.Event]:
        with self._cond:
            if not self._cond.wait_for(lambda: command_id in self.arrived, timeout):
                raise RuntimeError(f"no answer to {command_id} within {timeout} s")
            return self.arrived[command_id]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass(frozen=True)
class RoundTrips:
    no_delay: bool
    """TCP_NODELAY on every socket of the path (not the default of paho or mosquitto)."""
    pings: int
    signed_ms: list[float]
    unsigned_ms: list[float]
    answered: int
    """Pings answered with ping-done, of 2 x pings."""
    refused: list[str]
    """Reasons of pings refused (none expected)."""
    forged_refusal: str | None
    """The reason given for a signed command changed after signing."""

    @property
    def signed_median(self) -> float:
        return statistics.median(self.signed_ms)

    @property
    def unsigned_median(self) -> float:
        return statistics.median(self.unsigned_ms)

    @property
    def ratio(self) -> float:
        return self.signed_median / self.unsigned_median


def p95(values: Sequence[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def nodelay(client: Any, on: bool) -> None:
    """TCP_NODELAY on or off on a connected paho client's socket (the service and the agent set
    it on when they connect: ``edgeops.core.broker.no_delay``)."""
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(on))


def measure_round_trips(
    work: Path, key_path: Path, pub: Path, s: Settings, *, no_delay: bool
) -> RoundTrips:
    work = work / ("nodelay" if no_delay else "nagle")
    # the broker's side: as shipped (TCP_NODELAY), or mosquitto's default (Nagle's algorithm)
    broker = Mosquitto(directory=work / "broker", nodelay=no_delay)
    with broker:
        cfg = ServiceConfig(
            broker=f"mqtt://127.0.0.1:{broker.port}",
            db=f"sqlite:///{work / 'service.db'}",
            group=f"bench-{uuid.uuid4().hex[:6]}",
            command_key=key_path,
            fleet_interval=3600.0,
        )
        agent_cfg = AgentConfig(
            device=DeviceConfig(id=DEVICE, fleet=FLEET),
            model=ModelConfig(store=work / "device" / "store"),
            mqtt=MqttConfig(port=broker.port, outbox=work / "device" / "outbox.db"),
            http=HttpConfig(enabled=False),
            commands=CommandsConfig(trusted_keys=(pub,), allow_unsigned=True),
        )
        with Service(cfg, http=False) as service, Agent(agent_cfg) as agent:
            if not service.connected.wait(15):
                raise RuntimeError("the service did not connect to the broker")
            assert agent.link is not None and agent.link.wait_connected(15)
            answers = Answers(broker.port)
            for client in (service.client, agent.link.client, answers.client):
                nodelay(client, no_delay)
            signer = service.commands
            unsigned = CommandSigner(service.store, None)
            times: dict[bool, list[float]] = {True: [], False: []}
            refused: list[str] = []
            answered = 0
            try:

                def ping(signed: bool) -> None:
                    nonlocal answered
                    service.commands = signer if signed else unsigned
                    now = time.time()
                    draft = CommandDraft(uuid.uuid4().hex[:12], wire.PingArgs(), now, now + 60)
                    t0 = time.perf_counter()
                    service.send_commands([Addressed(FLEET, DEVICE, draft)])
                    t1, ev = answers.wait(draft.id)
                    if ev.kind == "ping-done":
                        answered += 1
                        times[signed].append((t1 - t0) * 1000.0)
                    else:
                        refused.append(str(ev.data.get("reason")))

                for _ in range(3):  # warm both paths
                    ping(True)
                    ping(False)
                answered, refused = 0, []
                times = {True: [], False: []}
                say(f"round trips: {s.pings} signed and {s.pings} unsigned pings, alternating")
                for i in range(s.pings):
                    first = i % 2 == 0  # ABBA: signed, unsigned, unsigned, signed, ...
                    ping(first)
                    ping(not first)
                # A signed command changed after signing: refused, and by its reason.
                service.commands = signer
                now = time.time()
                draft = CommandDraft(
                    "forged-" + uuid.uuid4().hex[:8], wire.PingArgs(), now, now + 60
                )
                ((topic, cmd),) = signer.issue([Addressed(FLEET, DEVICE, draft)])
                data = json.loads(wire.encode(cmd))
                data["counter"] += 1
                service.client.publish(topic, json.dumps(data).encode(), qos=1)
                _, ev = answers.wait(draft.id)
                forged = str(ev.data.get("reason")) if ev.kind == "command-rejected" else None
            finally:
                answers.close()
                service.commands = signer
    return RoundTrips(no_delay, s.pings, times[True], times[False], answered, refused, forged)


# --- report -------------------------------------------------------------------------------------


def tables(rows: list[PerCommand], trips: list[RoundTrips]) -> str:
    a = render(
        ["command", "bytes", "encode", "sign+encode", "x", "decode+check", "signed", "x", "added"],
        [
            [
                r.kind,
                r.payload_bytes,
                fmt(r.encode_us),
                fmt(r.sign_us),
                f"{r.service_ratio:.1f}",
                fmt(r.decode_check_unsigned_us),
                fmt(r.decode_check_signed_us),
                f"{r.device_ratio:.1f}",
                fmt(r.added_us),
            ]
            for r in rows
        ],
        title=(
            "Per command, microseconds: on the service, encode unsigned against sign + encode; "
            "on the device, decode + check unsigned (development mode) against signed; added: "
            "what a signature costs both sides together"
        ),
    )
    out = [a]
    for rt in trips:
        out.append(
            render(
                ["pings", "median ms", "p95 ms", "max ms"],
                [
                    [
                        f"signed ({len(rt.signed_ms)})",
                        fmt(rt.signed_median),
                        fmt(p95(rt.signed_ms)),
                        fmt(max(rt.signed_ms)),
                    ],
                    [
                        f"unsigned ({len(rt.unsigned_ms)})",
                        fmt(rt.unsigned_median),
                        fmt(p95(rt.unsigned_ms)),
                        fmt(max(rt.unsigned_ms)),
                    ],
                    ["signed / unsigned", f"{rt.ratio:.3f}", "", ""],
                ],
                title=(
                    "Round trip, "
                    + (
                        "as shipped: TCP_NODELAY on every socket (broker and clients)"
                        if rt.no_delay
                        else "Nagle's algorithm on (paho's and mosquitto's own default)"
                    )
                    + ": Service.send_commands (number, sign, publish) to the device's ping-done "
                    "event, through mosquitto and the agent's command thread and outbox"
                ),
            )
        )
    return "\n\n".join(out)


def goals(rows: list[PerCommand], trips: list[RoundTrips]) -> list[Goal]:
    ping = next(r for r in rows if r.kind == "ping")
    out = []
    for rt in trips:
        label = "as shipped" if rt.no_delay else "Nagle on"
        share = ping.added_us / 1000.0 / rt.unsigned_median
        total = 2 * rt.pings
        out += [
            Goal(
                f"every ping answered, none refused ({label})",
                f"{rt.answered} of {total} answered; refused: {rt.refused or 'none'}",
                rt.answered == total and not rt.refused,
            ),
            Goal(
                f"a signed command changed after signing is refused ({label})",
                f"reason: {rt.forged_refusal}",
                rt.forged_refusal == "bad signature",
            ),
            Goal(
                f"signed round trip <= {RATIO_GOAL}x unsigned ({label})",
                f"{rt.ratio:.3f}x ({fmt(rt.signed_median)} against {fmt(rt.unsigned_median)} ms)",
                rt.ratio <= RATIO_GOAL,
            ),
            Goal(
                f"sign + verify <= {SHARE_GOAL:.0%} of an unsigned round trip ({label})",
                f"{share:.1%} ({fmt(ping.added_us)} us of {fmt(rt.unsigned_median)} ms)",
                share <= SHARE_GOAL,
            ),
        ]
    return out


def run(s: Settings) -> None:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    work = s.out / "commands"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    key_path, pub = generate_keypair(work / "keys", "command")
    key = load_signing_key(key_path)
    rows = measure_per_command(key, s)
    trips = [
        measure_round_trips(work, key_path, pub, s, no_delay=False),
        measure_round_trips(work, key_path, pub, s, no_delay=True),
    ]
    met = goals(rows, trips)
    print(tables(rows, trips))
    print()
    print(goal_lines(met))
    out = s.out / "commands.json"
    write_json_atomic(
        out,
        {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "settings": {**asdict(s), "out": str(s.out)},
            "per_command": [
                {
                    **asdict(r),
                    "service_ratio": r.service_ratio,
                    "device_ratio": r.device_ratio,
                    "added_us": r.added_us,
                }
                for r in rows
            ],
            "round_trips": [
                {
                    **asdict(rt),
                    "signed_median_ms": rt.signed_median,
                    "unsigned_median_ms": rt.unsigned_median,
                    "ratio": rt.ratio,
                }
                for rt in trips
            ],
            "goals": [asdict(g) for g in met],
            "all_goals_pass": all(g.passed for g in met),
            "versions": package_versions(("edgeops", "cryptography", "msgspec", "paho-mqtt")),
            "seconds": elapsed(),
        },
    )
    say(f"wrote {out}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_mode_options(ap, "100 pings of each kind, fewer calls")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args(argv)
    run(Settings.of(mode_of(args), args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
