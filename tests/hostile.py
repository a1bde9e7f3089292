"""Hostile messages for the intake tests: each well-formed enough to reach a consumer, each with
the reason the service must give for refusing it."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

import msgspec

from edgeops.core import topics, wire


@dataclass(frozen=True)
class Hostile:
    kind: str
    """What it tries (for messages)."""
    topic: str
    payload: bytes
    reasons: frozenset[str]
    """The reasons the service may give (one of them)."""


def _deep(depth: int) -> str:
    opens = "".join('{"k":' if i % 2 else "[" for i in range(depth))
    closes = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return f"{opens}1{closes}"


def _json(data: object) -> bytes:
    return msgspec.json.encode(data)


def hostile_messages(
    valid: wire.Telemetry, fleet: str, devices: list[str], rng: random.Random, *, scale: int = 1
) -> list[Hostile]:
    """Every kind of hostile message, ``scale`` times over (unique-name floods more), sent as
    ``devices`` (each a real device id of the fleet, so nothing is refused for its topic alone
    unless that is the point)."""
    now = time.time()
    base = msgspec.to_builtins(valid)
    out: list[Hostile] = []
    seq = iter(range(10**6, 10**7))

    def device() -> str:
        return rng.choice(devices)

    def window(**change: object) -> tuple[str, bytes]:
        dev = device()
        data = {**base, "device": dev, "boot": "hostile", "seq": next(seq), "sent": now}
        data.update(window_start=now - 10, window_end=now)
        data.update(change)
        return topics.telemetry(fleet, dev), _json(data)

    def add(kind: str, reasons: set[str], topic_payload: tuple[str, bytes]) -> None:
        out.append(Hostile(kind, topic_payload[0], topic_payload[1], frozenset(reasons)))

    bad = {"bad field"}
    model = base["model"]
    lat = base["latency"]
    for _ in range(scale):
        dev = device()
        event = {
            "type": "event",
            "schema": "1.0",
            "device": dev,
            "boot": "hostile",
            "seq": next(seq),
            "sent": now,
            "kind": "log",
            "data": "@",
        }
        depth = rng.randint(900, 1000)
        payload = json.dumps(event).replace('"@"', '{"x":' + _deep(depth) + "}").encode()
        add("deep event data", {"bad field", "not json"}, (topics.events(fleet, dev), payload))
        add("65-character version", bad, window(model={**model, "version": "v" * 65}))
        add(
            "a window in the far future with a huge count",
            bad,
            window(window_end=1e15, count=10**6, errors=0),
        )
        add("NUL in the model name", bad, window(model={**model, "name": "dig\x00its"}))
        add("NUL in a feature name", bad, window(inputs=[{**base["inputs"][0], "name": "a\x00"}]))
        add("count beyond the bound", bad, window(count=2**62))
        add("count as a string", bad, window(count="600"))
        add("histogram that does not add up", bad, window(latency={**lat, "count": 10**6}))
        add(
            "bucket index 1e9",
            bad,
            window(latency={**lat, "buckets": {"1000000000": lat["count"]}, "zero": 0}),
        )
        add("window ending before it starts", bad, window(window_start=now, window_end=now - 5))
        add("an hour ahead of the service's clock", {"clock"}, window(sent=now + 3600))
        add(
            "thirty days old",
            {"clock"},
            window(
                sent=now - 30 * 86400,
                window_start=now - 30 * 86400 - 10,
                window_end=now - 30 * 86400,
            ),
        )
        first = base["inputs"][0]
        add(
            "bins that are not the baseline's",
            {"baseline"},
            window(inputs=[{**first, "counts": [first["count"], 0, 0]}]),
        )
        add(
            "a feature the baseline does not have",
            {"baseline"},
            window(inputs=[{**first, "name": "not-a-feature"}]),
        )
        t, p = window()
        add("a device that is not the topic's", {"topic"}, (topics.telemetry(fleet, "other"), p))
        add("no such topic", {"topic"}, (f"edgeops/v1/{fleet}/{device()}/telemetry/x", p))
        add("random bytes", set(wire.REASONS), (t, rng.randbytes(rng.randint(1, 400))))
        add("truncated", {"not json"}, (t, p[: rng.randrange(1, len(p) - 1)]))
        add("an array", {"no schema"}, (t, b"[1, 2, 3]"))
        other = p.replace(f'"schema":"{wire.SCHEMA_VERSION}"'.encode(), b'"schema":"9.0"')
        add("another major version", {"unknown major version"}, (t, other))
        add("a command on the telemetry topic", {"unexpected type"}, window(type="command"))
    for i in range(8 * scale):
        name = f"m{i}-" + "x" * 150_000
        add("a unique 150 KB model name", bad, window(model={**model, "name": name}))
    return out
