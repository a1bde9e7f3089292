"""Typed event data (:mod:`edgeops.core.events`): every kind's record through the wire and back,
events from an older agent (hand-built dicts), kinds this side does not know, data that does not
fit its kind, and well-formed hostile values anywhere in a kind's data."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeops.core import events, wire
from edgeops.core.errors import WireError
from tests.test_wire import header
from tests.test_wire_hostile import SETTINGS, json_values, paths, put

HEALTH = events.HealthOutcome(
    predictions=120,
    errors=1,
    p95_ms=2.5,
    latency_ratio=1.1,
    ratio_basis="traffic",
    error_rate=1 / 121,
)

EXAMPLES: list[events.EventData] = [
    events.Started(agent_version="0.1.0", commands="signed by one of 1 trusted key(s)"),
    events.Stopped(),
    events.CommandRejected(),
    events.CommandRejected(reason="bad field"),
    events.CommandRejected(reason="replayed", kind="rollback"),
    events.PingDone(pong=1_700_000_001.25, boot="3f2a9c"),
    events.PingFailed(),
    events.SetConfigDone(window_seconds=5.0, sample_rate=0.5),
    events.SetConfigFailed(),
    events.RollbackDone(changed=False, model=None, version=None),
    events.RollbackDone(changed=True, model="digits", version="1.0.0"),
    events.RollbackFailed(),
    events.RollbackFailed(reason="not the previous version", previous="0.9.0"),
    events.UpdateDownloading(
        version="1.1.0",
        url="https://fleet.example:8480/v1/bundles/" + "ab" * 32,
        size=123_456,
        clamped=["max_error_rate"],
    ),
    events.UpdateVerifying(version="1.1.0", bytes=123_456),
    events.UpdateStaged(version="1.1.0", entry="digits-1.1.0-0123456789ab"),
    events.UpdateSwitching(
        version="1.1.0",
        from_="1.0.0",
        to="1.1.0",
        samples_p95_ms=events.SamplesP95(previous=1.5, new=1.75),
    ),
    events.UpdateSwitching(
        version="1.1.0",
        from_=None,
        to="1.1.0",
        samples_p95_ms=events.SamplesP95(previous=None, new=1.75),
    ),
    events.UpdateHealth(
        version="1.1.0",
        predictions=20,
        seconds=60.0,
        max_error_rate=0.05,
        max_p95_ms=None,
        max_latency_ratio=20.0,
    ),
    events.UpdateCommitted(version="1.1.0", at="health", health=HEALTH),
    events.UpdateRolledBack(
        version="1.1.0",
        at="health",
        reason="error rate 0.2 is above 0.05",
        serving="1.0.0",
        health=HEALTH,
    ),
    events.UpdateRolledBack(
        version="1.1.0", at="health", reason="interrupted during health window", serving=None
    ),
    events.UpdateFailed(),
    events.UpdateFailed(at="request", reason="downgrade"),
    events.UpdateFailed(version="1.1.0", at="verifying", reason="bad signature", serving="1.0.0"),
]


def event(kind: str, data: Any, seq: int = 9) -> wire.Event:
    return wire.Event(**header(seq), kind=kind, command_id="d1/cam-01/u", data=data)


def test_every_kind_has_an_example_and_a_record_of_its_own() -> None:
    assert {events.kind_of(x) for x in EXAMPLES} == set(events.KINDS)
    assert len({cls.__name__ for cls in events.KINDS.values()}) == len(events.KINDS)
    for kind in wire.COMMAND_KINDS:  # every command is answered with KIND-done or KIND-failed
        assert f"{kind}-failed" in events.KINDS
        assert kind == "update" or f"{kind}-done" in events.KINDS
        assert events.kind_of(events.failed(kind)) == f"{kind}-failed"


@pytest.mark.parametrize("data", EXAMPLES, ids=lambda x: events.kind_of(x))
def test_every_kind_round_trips_through_the_wire(data: events.EventData) -> None:
    ev = event(events.kind_of(data), events.to_data(data))
    back = wire.decode(wire.encode(ev), wire.Event)
    assert back == ev
    assert events.data_of(back) == data
    assert events.misfit(back.kind, back.data) is None


def test_the_json_shape_is_the_one_agents_always_sent() -> None:
    """Field names as before (``from``, not ``from_``), a required field null when it is None,
    an optional field left out when it is None."""
    switching = events.UpdateSwitching(
        version="1.1.0",
        from_=None,
        to="1.1.0",
        samples_p95_ms=events.SamplesP95(previous=None, new=1.75),
    )
    assert events.to_data(switching) == {
        "version": "1.1.0",
        "from": None,
        "to": "1.1.0",
        "samples_p95_ms": {"previous": None, "new": 1.75},
    }
    assert events.to_data(events.UpdateFailed(at="request")) == {"at": "request"}
    assert events.to_data(events.UpdateFailed()) == {}
    assert events.to_data(events.CommandRejected(reason="unsigned")) == {"reason": "unsigned"}
    assert events.to_data(events.RollbackDone(changed=False, model=None, version=None)) == {
        "changed": False,
        "model": None,
        "version": None,
    }
    rolled = events.to_data(
        events.UpdateRolledBack(version="1.1.0", at="health", reason="interrupted", serving=None)
    )
    assert list(rolled) == ["version", "at", "reason", "serving"] and rolled["serving"] is None


# What the agent sent before its data was typed: dicts built by hand, as they were.
OLDER_AGENT: list[tuple[str, dict[str, Any], events.EventData]] = [
    (
        "started",
        {"agent_version": "0.1.0", "commands": "unsigned accepted (development mode)"},
        events.Started(agent_version="0.1.0", commands="unsigned accepted (development mode)"),
    ),
    ("stopped", {}, events.Stopped()),
    (
        "command-rejected",
        {"reason": "not recorded", "kind": "ping"},
        events.CommandRejected(reason="not recorded", kind="ping"),
    ),
    (
        "rollback-failed",
        {"reason": "no previous model"},
        events.RollbackFailed(reason="no previous model"),
    ),
    (
        "update-switching",
        {"version": "2", "from": "1", "to": "2", "samples_p95_ms": {"previous": 1, "new": 2}},
        events.UpdateSwitching(
            version="2", from_="1", to="2", samples_p95_ms=events.SamplesP95(previous=1.0, new=2.0)
        ),
    ),
    (
        "update-failed",
        {"version": "2", "at": "staged", "reason": "no runtime", "serving": None},
        events.UpdateFailed(version="2", at="staged", reason="no runtime"),
    ),
    (
        "update-committed",
        {
            "version": "2",
            "at": "health",
            "health": {
                "predictions": 20,
                "errors": 0,
                "p95_ms": 1,
                "latency_ratio": None,
                "ratio_basis": "samples",
                "error_rate": 0,
            },
        },
        events.UpdateCommitted(
            version="2",
            at="health",
            health=events.HealthOutcome(
                predictions=20,
                errors=0,
                p95_ms=1.0,
                latency_ratio=None,
                ratio_basis="samples",
                error_rate=0.0,
            ),
        ),
    ),
]


@pytest.mark.parametrize(("kind", "data", "typed"), OLDER_AGENT, ids=[k for k, _, _ in OLDER_AGENT])
def test_an_older_agents_dict_reads_as_its_kinds_record(
    kind: str, data: dict[str, Any], typed: events.EventData
) -> None:
    payload = json.dumps({"type": "event", "schema": "1.0", **header(), "kind": kind, "data": data})
    ev = wire.decode(payload.encode(), wire.Event)
    assert ev.data == data  # the wire keeps what was sent
    assert events.data_of(ev) == typed


def test_fields_a_newer_agent_adds_are_ignored() -> None:
    ev = event("ping-done", {"pong": 1_700_000_000.0, "boot": "b", "rtt_ms": 3, "x": {"y": [1]}})
    assert events.data_of(ev) == events.PingDone(pong=1_700_000_000.0, boot="b")


def test_an_unknown_kind_is_kept_and_reads_as_nothing() -> None:
    ev = wire.decode(wire.encode(event("calibrated", {"gain": 1.5, "nested": {"a": [1, 2]}})))
    assert isinstance(ev, wire.Event) and ev.data == {"gain": 1.5, "nested": {"a": [1, 2]}}
    assert events.data_of(ev) is None
    assert events.misfit(ev.kind, ev.data) == "unknown event kind"


MISFITS: list[tuple[str, dict[str, Any], str]] = [
    ("started", {}, "agent_version"),
    ("started", {"agent_version": "v" * 65, "commands": "x"}, "$.agent_version"),
    ("command-rejected", {"reason": "because"}, "$.reason"),
    ("command-rejected", {"kind": "reboot"}, "$.kind"),
    ("ping-done", {"pong": "now", "boot": "b"}, "$.pong"),
    ("ping-done", {"pong": 1e12, "boot": "b"}, "$.pong"),
    ("set-config-done", {"window_seconds": -1, "sample_rate": 0.5}, "$.window_seconds"),
    ("set-config-done", {"window_seconds": 5, "sample_rate": 2}, "$.sample_rate"),
    ("rollback-done", {"changed": 1, "model": None, "version": None}, "$.changed"),
    (
        "update-downloading",
        {"version": "1", "url": "file:///etc/passwd", "size": 1, "clamped": []},
        "$.url",
    ),
    (
        "update-downloading",
        {"version": "1", "url": "https://h/b", "size": 1, "clamped": ["x"] * 17},
        "$.clamped",
    ),
    ("update-verifying", {"version": "1", "bytes": 2**41}, "$.bytes"),
    (
        "update-switching",
        {"version": "1", "to": "2", "samples_p95_ms": {"previous": 1, "new": 1}},
        "`from`",
    ),
    (
        "update-committed",
        {"version": "1", "at": "health", "health": {"predictions": -1}},
        "$.health",
    ),
    ("update-committed", {"version": 1, "at": "health"}, "$.version"),
    (
        "update-rolled-back",
        {
            "version": "1",
            "at": "health",
            "reason": "r",
            "serving": None,
            "health": {**msgspec.to_builtins(HEALTH), "ratio_basis": "vibes"},
        },
        "$.health.ratio_basis",
    ),
    (
        "update-failed",
        {"health": {**msgspec.to_builtins(HEALTH), "error_rate": 1.5}},
        "$.health.error_rate",
    ),
    ("update-failed", {"reason": ["a", "list"]}, "$.reason"),
]


@pytest.mark.parametrize(
    ("kind", "data", "where"), MISFITS, ids=[f"{k}-{w}" for k, _, w in MISFITS]
)
def test_data_that_does_not_fit_its_kind_is_kept_and_reads_as_nothing(
    kind: str, data: dict[str, Any], where: str
) -> None:
    ev = wire.decode(wire.encode(event(kind, data)), wire.Event)
    assert ev.data == data  # kept as sent
    assert events.data_of(ev) is None
    why = events.misfit(kind, data)
    assert why is not None and why.startswith(f"data does not fit {kind}: ") and where in why
    assert "\n" not in why and len(why) <= 240


def test_a_misfit_names_a_long_value_in_one_clipped_line() -> None:
    why = events.misfit("command-rejected", {"reason": "x\n" * 2000})
    assert why is not None and "\n" not in why and len(why) <= 240


def test_the_agent_cannot_send_data_outside_its_records_bounds() -> None:
    """A producer's bug is found at the source, as the wire's encoder does for a message."""
    with pytest.raises(ValueError, match=r"\$\.agent_version"):
        events.to_data(events.Started(agent_version="v" * 65, commands=""))
    with pytest.raises(ValueError, match=r"\$\.sample_rate"):
        events.to_data(events.SetConfigDone(window_seconds=5.0, sample_rate=1.5))


# Every path inside every example's data, and hostile values to put there.
_BASES = [(events.kind_of(x), events.to_data(x)) for x in EXAMPLES]
_PATHS = [(i, p) for i, (_, d) in enumerate(_BASES) for p in paths(d)]


@SETTINGS
@given(
    st.sampled_from(_PATHS),
    json_values,
    st.sampled_from([None, *sorted(events.KINDS), "update-done", "x" * 64]),
)
def test_a_hostile_value_in_any_kinds_data_is_kept_and_never_breaks_a_reader(
    where: tuple[int, tuple[Any, ...]], value: Any, other_kind: str | None
) -> None:
    index, path = where
    kind, base = _BASES[index]
    data = copy.deepcopy(base)
    put(data, path, value)
    kind = other_kind or kind
    try:
        payload = msgspec.json.encode(
            {"type": "event", "schema": "1.0", **header(), "kind": kind, "data": data}
        )
    except (OverflowError, TypeError, UnicodeEncodeError):
        return  # not expressible as JSON bytes: nothing a broker could carry
    try:
        ev = wire.decode(payload, wire.Event)
    except WireError as e:
        assert e.reason in wire.REASONS
        return
    typed = events.data_of(ev)  # never raises
    why = events.misfit(ev.kind, ev.data)
    assert (typed is None) == (why is not None)
    if typed is not None:
        assert events.kind_of(typed) == ev.kind
        # what a reader got is within its record's bounds: it goes back on the wire as it is
        again = event(ev.kind, events.to_data(typed))
        assert events.data_of(wire.decode(wire.encode(again), wire.Event)) == typed
