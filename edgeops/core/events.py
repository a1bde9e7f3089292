"""What a device's events carry: one typed record per event kind, and the one place that reads
an event's ``data`` as its kind's record.

A device publishes :class:`edgeops.core.wire.Event` with a ``kind`` and a ``data`` object. The
agent builds ``data`` as the record of its kind (:data:`EventData`: a misspelled field is a type
error where the event is made); the wire carries the record as the JSON object it always was
(fields in their JSON names, an optional field left out when it is null), so an Event from an
older agent, whose ``data`` was a hand-built dict of the same keys, reads the same.

A reader gets the record back with :func:`data_of` (or :func:`parse` from a stored row's kind and
data). An event whose kind this side does not know (a newer agent's), or whose data does not fit
its kind's record (a field of the wrong type or out of its bounds; unknown fields are ignored, as
everywhere on the wire), reads as None: the event itself is kept as it came (stored, listed,
shown, its kind acted on), nothing is read from its data, and :func:`misfit` says why, so the
intake counts and logs it. Decoding never raises for any data the wire admitted (the bounds of
:func:`edgeops.core.wire.check_data` hold before anything here runs).

A new kind: its record below (a subclass of :class:`_Data` with ``KIND``) and its name in
:data:`EventData`. This is a core module: it runs on devices.

The kinds::

    started, stopped                         the agent's life
    command-rejected                         a command not acted on, and why
    ping-done, ping-failed                   answers to commands, KIND-done / KIND-failed
    set-config-done, set-config-failed
    rollback-done, rollback-failed
    update-downloading, update-verifying,    an update's progress (each state before it is
    update-staged, update-switching,         acted on)
    update-health
    update-committed, update-rolled-back,    an update's outcome
    update-failed
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, cast, get_args

import msgspec

from edgeops.core import wire
from edgeops.core.commands import Refusal

Version = wire.ShortText
"""A model version as an event names it."""
Ms = Annotated[float, msgspec.Meta(ge=0, le=wire.MAX_LATENCY_MS)]


class _Data(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The data of one event kind. An optional field (default None) is left out of the JSON
    when it is None; a required one is always there, null included."""

    KIND: ClassVar[str]


# --- the agent's life ---------------------------------------------------------------------------


class Started(_Data, frozen=True, kw_only=True):
    KIND = "started"

    agent_version: wire.ShortText
    commands: wire.Text
    """Which commands the agent accepts: signed by which keys, or unsigned too (development)."""


class Stopped(_Data, frozen=True, kw_only=True):
    KIND = "stopped"


# --- commands -----------------------------------------------------------------------------------

RejectReason = wire.Reason | Refusal | Literal["not recorded"]
"""Why a command was not acted on: the codec's reason (:data:`edgeops.core.wire.REASONS`), the
guard's (:data:`edgeops.core.commands.REFUSALS`), or its counter could not be recorded."""


class CommandRejected(_Data, frozen=True, kw_only=True):
    KIND = "command-rejected"

    reason: RejectReason | None = None
    """None: the agent's command queue was full."""
    kind: wire.CommandKind | None = None
    """The command's kind, when it was read."""


class PingDone(_Data, frozen=True, kw_only=True):
    KIND = "ping-done"

    pong: wire.Time
    """The device's clock when it answered."""
    boot: wire.Id


class PingFailed(_Data, frozen=True, kw_only=True):
    KIND = "ping-failed"


class SetConfigDone(_Data, frozen=True, kw_only=True):
    KIND = "set-config-done"

    window_seconds: wire.Positive
    sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)]
    """Both settings as they are now."""


class SetConfigFailed(_Data, frozen=True, kw_only=True):
    KIND = "set-config-failed"


class RollbackDone(_Data, frozen=True, kw_only=True):
    KIND = "rollback-done"

    changed: bool
    """False: a conditional rollback whose model was not current; nothing changed."""
    model: wire.ModelName | None
    version: Version | None
    """The model served now."""


class RollbackFailed(_Data, frozen=True, kw_only=True):
    KIND = "rollback-failed"

    reason: Literal["no previous model", "not the previous version"] | None = None
    """None: another failure (an update in progress); the event's message says which."""
    previous: Version | None = None
    """The previous model's version, when it is not the one asked for."""


# --- updates ------------------------------------------------------------------------------------


class UpdateDownloading(_Data, frozen=True, kw_only=True):
    KIND = "update-downloading"

    version: Version
    url: wire.Url
    size: wire.Count
    clamped: Annotated[list[wire.ShortText], msgspec.Meta(max_length=16)]
    """The command's health settings looser than the device's floors (clamped to them)."""


class UpdateVerifying(_Data, frozen=True, kw_only=True):
    KIND = "update-verifying"

    version: Version
    bytes: wire.Count
    """Downloaded."""


class UpdateStaged(_Data, frozen=True, kw_only=True):
    KIND = "update-staged"

    version: Version
    entry: wire.Text
    """The model store's entry it was installed in."""


class SamplesP95(msgspec.Struct, frozen=True, kw_only=True):
    """Both models' p95 latency on the bundle's sample inputs (ms)."""

    previous: Ms | None
    new: Ms | None


class UpdateSwitching(_Data, frozen=True, kw_only=True):
    KIND = "update-switching"

    version: Version
    from_: Version | None = msgspec.field(name="from")
    """The version served before; None: no model."""
    to: Version
    samples_p95_ms: SamplesP95


class UpdateHealth(_Data, frozen=True, kw_only=True):
    """The health window the new model is judged in (the command's, tightened to the device's
    floors)."""

    KIND = "update-health"

    version: Version
    predictions: wire.Count | None
    seconds: wire.Positive | None
    max_error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None
    max_p95_ms: Ms | None
    max_latency_ratio: wire.Positive | None


class HealthOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What an update's health window saw, and the latencies it was judged on."""

    predictions: wire.Count
    errors: wire.Count
    p95_ms: Ms | None
    """The new model's p95: the window's traffic, else the sample inputs."""
    latency_ratio: wire.Positive | None
    """The new model's p95 over the previous model's, on ``ratio_basis``."""
    ratio_basis: Literal["traffic", "samples"]
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)]


class UpdateCommitted(_Data, frozen=True, kw_only=True):
    KIND = "update-committed"

    version: Version
    at: wire.ShortText | None
    """The state it was in when it ended."""
    health: HealthOutcome | None = None


class UpdateRolledBack(_Data, frozen=True, kw_only=True):
    KIND = "update-rolled-back"

    version: Version
    at: wire.ShortText | None
    reason: wire.Text
    serving: Version | None
    """The version served after the rollback."""
    health: HealthOutcome | None = None
    """None when the health window did not finish (an interrupted update)."""


class UpdateFailed(_Data, frozen=True, kw_only=True):
    """An update that failed: refused at the request (``at: request``, ``reason`` the policy's
    short reason), failed before anything was persisted (no data), or failed in a state."""

    KIND = "update-failed"

    version: Version | None = None
    at: wire.ShortText | None = None
    reason: wire.Text | None = None
    serving: Version | None = None
    health: HealthOutcome | None = None


UpdateOutcome = UpdateCommitted | UpdateRolledBack | UpdateFailed
"""The events that end an update; a deployment reads the device's verdict from them."""

EventData = (
    Started
    | Stopped
    | CommandRejected
    | PingDone
    | PingFailed
    | SetConfigDone
    | SetConfigFailed
    | RollbackDone
    | RollbackFailed
    | UpdateDownloading
    | UpdateVerifying
    | UpdateStaged
    | UpdateSwitching
    | UpdateHealth
    | UpdateCommitted
    | UpdateRolledBack
    | UpdateFailed
)
"""Every event kind's data: the one list of the kinds a device sends."""

KINDS: dict[str, type[EventData]] = {cls.KIND: cls for cls in get_args(EventData)}
"""Each kind's record, by kind."""

Failure = PingFailed | SetConfigFailed | RollbackFailed | UpdateFailed
"""The ``KIND-failed`` answers to commands (every field optional)."""
_FAILURES: dict[str, type[Failure]] = {cls.KIND: cls for cls in get_args(Failure)}


def kind_of(data: EventData) -> str:
    """The kind of event ``data`` is the record of."""
    return data.KIND


def to_data(data: EventData) -> dict[str, Any]:
    """``data`` as an event's ``data`` object (JSON names, null optional fields left out).

    Raises ``ValueError`` when a reader would not take it as its kind's record (a value out of
    its bounds), so a producer finds its bug at the source, as :func:`edgeops.core.wire.encode`
    does for a whole message."""
    out = cast(dict[str, Any], msgspec.to_builtins(data))
    msgspec.convert(out, type(data))
    return out


def failed(kind: wire.CommandKind) -> Failure:
    """The data of a ``KIND-failed`` event that has nothing more to say than its message."""
    return _FAILURES[f"{kind}-failed"]()


def misfit(kind: str, data: Mapping[str, Any] | None) -> str | None:
    """Why ``data`` cannot be read as ``kind``'s record (one line), or None when it can."""
    cls = KINDS.get(kind)
    if cls is None:
        return "unknown event kind"
    try:
        msgspec.convert(data or {}, cls)
    except msgspec.ValidationError as e:
        return f"data does not fit {kind}: {_one_line(e)}"
    return None


def parse(kind: str, data: Mapping[str, Any] | None) -> EventData | None:
    """``data`` as ``kind``'s record; None for an unknown kind or data that does not fit it
    (see :func:`misfit`). Never raises for data the wire admitted."""
    cls = KINDS.get(kind)
    if cls is None:
        return None
    try:
        return msgspec.convert(data or {}, cls)
    except msgspec.ValidationError:
        return None


def _one_line(e: Exception, limit: int = 200) -> str:
    """The error's text on one line, at most ``limit`` characters (it may quote a value)."""
    text = str(e).replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def data_of(event: wire.Event) -> EventData | None:
    """An event's data as its kind's record, or None (see :func:`parse`)."""
    return parse(event.kind, event.data)
