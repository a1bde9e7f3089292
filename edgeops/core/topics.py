"""MQTT topic names: the only place topic strings are built and parsed.

::

    edgeops/v1/{fleet}/{device}/status      device →, retained
    edgeops/v1/{fleet}/{device}/telemetry   device →
    edgeops/v1/{fleet}/{device}/events      device →
    edgeops/v1/{fleet}/{device}/cmd         → device
    edgeops/v1/{fleet}/alerts/{device}      service →, retained

Fleet and device ids are 1 to 64 characters of ``[A-Za-z0-9_.-]``. The words used as topic levels
(``alerts``, ``status``, ``telemetry``, ``events``, ``cmd``) are reserved: a device named
``alerts`` would make its topics ambiguous, and a device named ``telemetry`` would have an alert
topic that a telemetry filter matches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

ROOT = "edgeops/v1"
QOS = 1
"""Every edgeops topic is published and subscribed at QoS 1."""

Kind = Literal["status", "telemetry", "events", "cmd", "alert"]
KINDS: tuple[Kind, ...] = get_args(Kind)
RETAINED: frozenset[Kind] = frozenset({"status", "alert"})

_ALERTS = "alerts"
_RESERVED = frozenset({_ALERTS, *KINDS})
_DEVICE_KINDS: dict[str, Kind] = {k: k for k in KINDS if k != "alert"}
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def check_id(value: str, what: str = "id") -> str:
    """``value`` if it is a valid fleet or device id; ValueError otherwise."""
    if not _ID.fullmatch(value):
        raise ValueError(f"{what} must be 1 to 64 characters of A-Z a-z 0-9 _ . -, got {value!r}")
    if value in _RESERVED:
        raise ValueError(f"{what} {value!r} is reserved (a topic level name)")
    return value


def retained(kind: Kind) -> bool:
    """Whether messages of this kind are published with the retain flag."""
    return kind in RETAINED


@dataclass(frozen=True)
class Topic:
    """A parsed edgeops topic."""

    fleet: str
    device: str
    kind: Kind

    def __str__(self) -> str:
        return build(self.fleet, self.device, self.kind)


def build(fleet: str, device: str, kind: Kind) -> str:
    """The topic of ``kind`` for one device."""
    check_id(fleet, "fleet")
    check_id(device, "device")
    if kind == "alert":
        return f"{ROOT}/{fleet}/{_ALERTS}/{device}"
    if kind not in _DEVICE_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{ROOT}/{fleet}/{device}/{kind}"


def status(fleet: str, device: str) -> str:
    return build(fleet, device, "status")


def telemetry(fleet: str, device: str) -> str:
    return build(fleet, device, "telemetry")


def events(fleet: str, device: str) -> str:
    return build(fleet, device, "events")


def cmd(fleet: str, device: str) -> str:
    return build(fleet, device, "cmd")


def alert(fleet: str, device: str) -> str:
    return build(fleet, device, "alert")


def device_filter(fleet: str = "+", *, kind: Kind) -> str:
    """A subscription filter for ``kind`` from every device of ``fleet`` (``+``: every fleet)."""
    if fleet != "+":
        check_id(fleet, "fleet")
    if kind == "alert":
        return f"{ROOT}/{fleet}/{_ALERTS}/+"
    if kind not in _DEVICE_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{ROOT}/{fleet}/+/{kind}"


def shared(group: str, filter: str) -> str:
    """An MQTT 5 shared subscription: the group's subscribers split the matching messages."""
    check_id(group, "group")
    if not filter or filter.startswith("$share/"):
        raise ValueError(f"not a topic filter to share: {filter!r}")
    return f"$share/{group}/{filter}"


def parse(topic: str) -> Topic:
    """The fleet, device and kind of an edgeops topic; ValueError for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or f"{parts[0]}/{parts[1]}" != ROOT:
        raise ValueError(f"not an edgeops topic: {topic!r}")
    fleet, middle, last = parts[2], parts[3], parts[4]
    kind: Kind
    if middle == _ALERTS:
        device, kind = last, "alert"
    elif last in _DEVICE_KINDS:
        device, kind = middle, _DEVICE_KINDS[last]
    else:
        raise ValueError(f"not an edgeops topic: {topic!r}")
    check_id(fleet, "fleet")
    check_id(device, "device")
    return Topic(fleet, device, kind)
