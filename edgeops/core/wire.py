"""The MQTT wire protocol: typed, versioned messages and the one place that encodes and decodes
them.

Every message is a frozen :mod:`msgspec` struct tagged by a ``type`` field. Device messages carry
the schema version, the device id, the boot id (new on every start) and a sequence number that
increases within a boot, so a consumer can drop QoS 1 duplicates by ``(device, boot, seq)``.

Versioning: ``schema`` is ``"MAJOR.MINOR"``. A consumer accepts any minor version of its major
(unknown fields are ignored) and refuses another major. Commands are the exception: they refuse
unknown fields, because a device checks a command's signature over the fields it knows.

1.1 changed commands (device messages are as in 1.0): typed arguments tagged by ``kind`` inside
``args``, the fleet and device they are for, a required deadline, a per-device counter and an
ed25519 signature. Devices and the service ship together: a 1.0 agent refuses a 1.1 command (it
finds no ``kind`` at the top: "bad field") and a 1.1 agent refuses a 1.0 command (no fleet,
device, counter or signature), each with a ``command-rejected`` event; neither acts on a command
it cannot check. The service reads 1.0 devices' telemetry, status and events as before.
"""

from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar, cast, get_args, overload

import msgspec

from edgeops.core.errors import WireError

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1.1"
SCHEMA_MAJOR = 1
MAX_PAYLOAD_BYTES = 256 * 1024
"""Larger payloads are refused by :func:`decode` (and never produced by :func:`encode`)."""

# --- bounded field types -----------------------------------------------------------------------
# Every string is bounded by the database column that stores it, and no string may hold NUL
# (PostgreSQL text cannot; :func:`decode` refuses a payload with the escape ``\u0000`` anywhere,
# which is cheaper than a pattern on every string); every number is bounded so that sums over a
# span stay exact and finite. A message outside these bounds is refused at decode, before
# anything stores or evaluates it.

_NUL_ESCAPE = b"\\u0000"
MAX_COUNT = 2**40
"""The largest count a message may carry (about 1.1e12): sums over any span fit 64 bits."""
MAX_MAGNITUDE = 1e100
"""The largest magnitude of a moment, mean or bound: merged moments stay finite."""
MAX_TIME = 1e11
"""Unix time in seconds, year 5138: any later is not a clock reading."""
MAX_LATENCY_MS = 1e9
"""A latency histogram's largest bucketed value (11.6 days)."""
MAX_BINS = 4096
"""Bins, categories or classes of one feature."""
MAX_FEATURES = 4096
"""Features (or outputs) of one window."""
MAX_DATA_DEPTH = 8
"""How deeply an event's ``data`` may nest."""
MAX_DATA_NODES = 4096
"""Values (containers, keys and leaves) in an event's ``data``."""

Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_COUNT)]
"""A non-negative integer: a count within :data:`MAX_COUNT`."""
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
DeviceId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
"""A device or fleet id (the topic's own check is stricter:
:func:`edgeops.core.topics.check_id`)."""
ModelName = Annotated[str, msgspec.Meta(max_length=128)]
ShortText = Annotated[str, msgspec.Meta(max_length=64)]
"""A version, a kind, a digest: what fits a 64-character column."""
FeatureName = Annotated[str, msgspec.Meta(max_length=256)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
Time = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIME)]
Magnitude = Annotated[float, msgspec.Meta(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
Positive = Annotated[float, msgspec.Meta(ge=0, le=MAX_MAGNITUDE)]
Counts = Annotated[list[Count], msgspec.Meta(max_length=MAX_BINS + 1)]


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    schema: str = SCHEMA_VERSION


class _DeviceMessage(_Message, frozen=True, kw_only=True):
    device: DeviceId
    boot: Id
    """A random id chosen at each agent start."""
    seq: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
    """Increases by one per message within a boot."""
    sent: Time
    """Unix time (seconds) when the message was made."""


MAX_WINDOW_SECONDS = 7 * 86400.0
"""The longest telemetry window."""


def _check_range(lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and lo > hi:
        raise ValueError("min is more than max")


def check_data(data: object) -> None:
    """ValueError unless ``data`` (decoded JSON) is within :data:`MAX_DATA_DEPTH`,
    :data:`MAX_DATA_NODES` and :data:`Text`'s string bounds. Iterative: no depth can make it
    recurse."""
    stack: list[tuple[object, int]] = [(data, 0)]
    nodes = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if nodes > MAX_DATA_NODES:
            raise ValueError(f"data holds more than {MAX_DATA_NODES} values")
        if isinstance(value, dict):
            if depth >= MAX_DATA_DEPTH:
                raise ValueError(f"data nested deeper than {MAX_DATA_DEPTH}")
            for k, v in value.items():
                _check_text(k)
                stack.append((v, depth + 1))
        elif isinstance(value, list):
            if depth >= MAX_DATA_DEPTH:
                raise ValueError(f"data nested deeper than {MAX_DATA_DEPTH}")
            stack.extend((v, depth + 1) for v in value)
        elif isinstance(value, str):
            _check_text(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError("data holds a number that is not finite")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**63:
            raise ValueError("data holds an integer beyond 64 bits")


def _check_text(s: str) -> None:
    if len(s) > 4096 or "\x00" in s:
        raise ValueError("data holds a string longer than 4096 characters or with NUL")


# --- telemetry window parts -------------------------------------------------------------------


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    name: ModelName
    version: ShortText
    sha256: ShortText


class LatencyHistogram(msgspec.Struct, frozen=True, kw_only=True):
    """Latencies in milliseconds in log-spaced buckets with bounded relative error.

    ``gamma = (1 + relative_accuracy) / (1 - relative_accuracy)``; bucket ``i`` holds the values in
    ``(gamma ** (i - 1), gamma ** i]``; values at or below ``min_value`` are counted in ``zero``.
    Histograms with the same ``relative_accuracy`` merge by adding counts.
    """

    relative_accuracy: Annotated[float, msgspec.Meta(ge=1e-4, le=0.5)]
    buckets: Annotated[dict[int, Count], msgspec.Meta(max_length=65536)]
    zero: Count = 0
    count: Count = 0
    sum: Positive = 0.0
    min: Positive | None = None
    max: Positive | None = None
    min_value: Annotated[float, msgspec.Meta(ge=1e-12, le=1.0)] = 1e-6

    def __post_init__(self) -> None:
        if sum(self.buckets.values()) + self.zero != self.count:
            raise ValueError("the buckets and zero do not add up to count")
        if self.buckets:
            gamma = (1.0 + self.relative_accuracy) / (1.0 - self.relative_accuracy)
            lo = math.floor(math.log(self.min_value) / math.log(gamma))
            hi = math.ceil(math.log(MAX_LATENCY_MS) / math.log(gamma)) + 1
            if min(self.buckets) < lo or max(self.buckets) > hi:
                raise ValueError(f"bucket index outside [{lo}, {hi}]")
        if self.count and (self.min is None or self.max is None):
            raise ValueError("a histogram with values needs min and max")
        _check_range(self.min, self.max)


class NumericWindow(msgspec.Struct, frozen=True, kw_only=True, tag="numeric"):
    """One numeric feature (or image reduction, or regression output) over a window.

    ``counts`` are per bin of the baseline's edges (``len(edges) + 1`` bins, open tails);
    ``out_of_range`` counts values outside the baseline's [min, max]; moments are mergeable.
    """

    name: FeatureName
    counts: Counts
    missing: Count = 0
    out_of_range: Count = 0
    count: Count = 0
    mean: Magnitude | None = None
    m2: Positive = 0.0
    min: Magnitude | None = None
    max: Magnitude | None = None

    def __post_init__(self) -> None:
        # on the intake's hot path (once per feature and window): only what a merge or a
        # distance needs, the cheap tests first
        lo, hi, mean = self.min, self.max, self.mean
        if lo is None or hi is None or mean is None:
            if self.count:
                raise ValueError("a window with values needs mean, min and max")
            return
        if not lo <= mean <= hi:
            if lo > hi:
                raise ValueError("min is more than max")
            slack = 1e-9 * max(abs(lo), abs(hi), 1.0)  # rounding in a merge of moments
            if not lo - slack <= mean <= hi + slack:
                raise ValueError("mean outside [min, max]")


class CategoricalWindow(msgspec.Struct, frozen=True, kw_only=True, tag="categorical"):
    """One categorical feature: counts per baseline category, then other and missing."""

    name: FeatureName
    counts: Counts
    other: Count = 0
    missing: Count = 0


class ClassOutputWindow(msgspec.Struct, frozen=True, kw_only=True, tag="class_output"):
    """A classifier's predicted-class counts and confidence histogram (baseline edges)."""

    name: FeatureName
    class_counts: Counts
    confidence_counts: Counts


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    """Labels sent later for earlier predictions: how many were right."""

    correct: Count = 0
    total: Count = 0


class ProcessStats(msgspec.Struct, frozen=True, kw_only=True):
    cpu_percent: Annotated[float, msgspec.Meta(ge=0, le=1e6)] = 0.0
    rss_bytes: Count = 0


class OutboxStats(msgspec.Struct, frozen=True, kw_only=True):
    pending: Count = 0
    dropped: Count = 0
    """Messages dropped since the outbox was created because it was full (oldest first)."""


InputWindow = NumericWindow | CategoricalWindow
OutputWindow = NumericWindow | ClassOutputWindow


# --- device messages --------------------------------------------------------------------------


class Telemetry(_DeviceMessage, frozen=True, kw_only=True, tag="telemetry"):
    """One measurement window."""

    window_start: Time
    window_end: Time
    model: ModelRef | None
    count: Count
    """Predictions served (samples, not calls)."""
    errors: Count
    """Predictions that failed inside the runtime."""
    bad_inputs: Count
    """Calls refused for their input (wrong shape, dtype, NaN where not allowed)."""
    latency: LatencyHistogram
    inputs: Annotated[list[InputWindow], msgspec.Meta(max_length=MAX_FEATURES)] = msgspec.field(
        default_factory=list
    )
    outputs: Annotated[list[OutputWindow], msgspec.Meta(max_length=MAX_FEATURES)] = msgspec.field(
        default_factory=list
    )
    feedback: Feedback = msgspec.field(default_factory=Feedback)
    process: ProcessStats = msgspec.field(default_factory=ProcessStats)
    outbox: OutboxStats = msgspec.field(default_factory=OutboxStats)

    def __post_init__(self) -> None:
        if self.window_end < self.window_start:
            raise ValueError("window_end is before window_start")
        if self.window_end - self.window_start > MAX_WINDOW_SECONDS:
            raise ValueError(f"a window longer than {MAX_WINDOW_SECONDS:.0f} s")
        if self.feedback.correct > self.feedback.total:
            raise ValueError("more correct feedback than feedback")
        for group in (self.inputs, self.outputs):
            if len({w.name for w in group}) != len(group):
                raise ValueError("a feature name is repeated")

    @property
    def throughput(self) -> float:
        """Predictions per second over the window."""
        span = self.window_end - self.window_start
        return self.count / span if span > 0 else 0.0


class Status(_DeviceMessage, frozen=True, kw_only=True, tag="status"):
    """Presence: the birth message (online) and the last will (offline), retained."""

    online: bool
    model: ModelRef | None = None
    agent_version: ShortText = ""
    started: Time = 0.0
    labels: Annotated[dict[ShortText, Text], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=dict
    )
    """Device labels, for rollouts that target a label selector."""


class Event(_DeviceMessage, frozen=True, kw_only=True, tag="event"):
    """Something that happened: a command's result, an update's progress, an error."""

    kind: ShortText
    level: Literal["info", "warning", "error"] = "info"
    message: Text = ""
    command_id: Id | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    """The record of ``kind`` as a JSON object (:mod:`edgeops.core.events`: the agent builds it
    typed, a reader gets it back with :func:`edgeops.core.events.data_of`). Decoded as any JSON
    object within these bounds, so an unknown kind or a record from another agent version is
    kept as it came: at most :data:`MAX_DATA_DEPTH` deep and :data:`MAX_DATA_NODES` values,
    strings within :data:`Text`'s bounds, numbers finite."""

    def __post_init__(self) -> None:
        check_data(self.data)


# --- service messages -------------------------------------------------------------------------

CommandKind = Literal["update", "rollback", "set-config", "ping"]
COMMAND_KINDS: tuple[CommandKind, ...] = get_args(CommandKind)
MAX_COMMAND_SECONDS = 7 * 86400.0
"""The longest a command may stay valid: its ``deadline`` is at most this after ``issued``."""
MAX_HEALTH_SECONDS = 86400.0
"""The longest health window a command may ask for."""
MAX_HEALTH_PREDICTIONS = 10**9

Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
"""64 lowercase hex digits."""
Url = Annotated[str, msgspec.Meta(min_length=8, max_length=2048, pattern="^https?://")]
"""An http or https URL (a bundle to download)."""
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Version = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Counter = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
KeyId = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{16}$")]
"""A key id: the first 16 hex digits of the sha256 of the raw public key
(:func:`edgeops.core.signing.key_id_of`)."""
Signature = Annotated[str, msgspec.Meta(min_length=86, max_length=88)]
"""An ed25519 signature (64 bytes) in URL-safe base64, unpadded (86 characters) or padded."""


class _Args(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="kind"
):
    """A command's typed arguments, tagged by the command's kind. Unknown fields are refused:
    a device acts only on what it understands, and its signature check covers only that."""


class HealthArgs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The health window an update asks for; null: the device's own setting. A device applies
    the stricter of the command's value and its own floor (``[update]`` in its config)."""

    predictions: Annotated[int, msgspec.Meta(ge=1, le=MAX_HEALTH_PREDICTIONS)] | None = None
    """End the window after this many predictions by the new model."""
    seconds: Annotated[float, msgspec.Meta(gt=0, le=MAX_HEALTH_SECONDS)] | None = None
    """End the window after this many seconds (the first of the two ends it)."""
    max_error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_p95_ms: Annotated[float, msgspec.Meta(gt=0, le=MAX_LATENCY_MS)] | None = None
    max_latency_ratio: Annotated[float, msgspec.Meta(gt=0, le=1e6)] | None = None
    """The new model's p95 over the previous model's."""


class UpdateArgs(_Args, frozen=True, kw_only=True, tag="update"):
    """Download, verify, stage and switch to a bundle, then watch its health."""

    url: Url
    sha256: Sha256
    """Of the whole bundle file."""
    size: Annotated[int, msgspec.Meta(ge=1, le=MAX_COUNT)]
    """The bundle file's size in bytes."""
    name: Name
    """The model's name in the bundle's manifest."""
    version: Version
    """The bundle's version; the device refuses one at or below its current version."""
    health: HealthArgs = msgspec.field(default_factory=HealthArgs)


class RollbackArgs(_Args, frozen=True, kw_only=True, tag="rollback"):
    """Serve the previous model again (it is kept on disk): an explicit rollback names the
    version it goes back to."""

    version: Version
    """The version of the device's previous model; refused when the previous model is another."""
    from_sha256: Sha256 | None = None
    """Only when this model (its model file's sha256) is current; otherwise nothing changes
    (a rollout's rollback of the devices it updated)."""


class SetConfigArgs(_Args, frozen=True, kw_only=True, tag="set-config"):
    """Change telemetry settings; at least one."""

    window_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] | None = None
    sample_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None

    def __post_init__(self) -> None:
        if self.window_seconds is None and self.sample_rate is None:
            raise ValueError("set-config needs window_seconds or sample_rate")


class PingArgs(_Args, frozen=True, kw_only=True, tag="ping"):
    """Answer with a ``ping-done`` event."""


CommandArgs = UpdateArgs | RollbackArgs | SetConfigArgs | PingArgs
"""Every command's arguments. A new command: its record above (tagged with its kind), its
name here and in :data:`CommandKind`, its ``KIND-done``/``KIND-failed`` records in
:mod:`edgeops.core.events`, and its handler on the device (``Agent._run_command``)."""
_KIND_OF: dict[type[_Args], CommandKind] = {
    cls: cast(CommandKind, cls.__struct_config__.tag) for cls in get_args(CommandArgs)
}
if set(_KIND_OF.values()) != set(COMMAND_KINDS):
    raise AssertionError("CommandKind and the tags of CommandArgs name other commands")


class Command(_Message, frozen=True, kw_only=True, forbid_unknown_fields=True, tag="command"):
    """An instruction to one device, signed by the service's command key
    (:mod:`edgeops.core.commands`).

    The signature covers every field but itself (:func:`edgeops.core.commands.signed_bytes`): the
    device and fleet it is for, its typed arguments, when it was issued, its deadline and a
    counter that increases per device, so a device refuses a command meant for another, a
    stale one and a replayed one. Unknown fields are refused rather than ignored: a signature
    over fields a device does not know could not be checked.
    """

    id: Id
    fleet: DeviceId
    device: DeviceId
    issued: Time
    deadline: Time
    """Unix time after which the device refuses the command."""
    counter: Counter
    """Increases with every command to this device; a device refuses one not above the last
    it accepted."""
    args: CommandArgs
    key: KeyId | None = None
    """The id of the command key that signed it; None: unsigned."""
    signature: Signature | None = None

    def __post_init__(self) -> None:
        if self.deadline <= self.issued:
            raise ValueError("the deadline is not after the issued time")
        if self.deadline - self.issued > MAX_COMMAND_SECONDS:
            raise ValueError(f"a deadline more than {MAX_COMMAND_SECONDS:.0f} s after issued")

    @property
    def kind(self) -> CommandKind:
        return _KIND_OF[type(self.args)]


class ActiveAlert(msgspec.Struct, frozen=True, kw_only=True):
    """One raised alert: what drifted, for which model, since when, and the distances."""

    kind: str
    """input, output, dataset, concept or latency."""
    feature: str
    model: str
    version: str
    raised: float
    detail: dict[str, Any] = msgspec.field(default_factory=dict)


class Alert(_Message, frozen=True, kw_only=True, tag="alert"):
    """The current alert state of a device (retained): every alert still raised for it.

    ``device`` is ``_fleet`` for alerts on a fleet's merged windows of one model version.
    """

    fleet: Id
    device: Id
    sent: float
    alerts: list[ActiveAlert] = msgspec.field(default_factory=list)


Message = Telemetry | Status | Event | Command | Alert
DeviceMessage = Telemetry | Status | Event
"""Messages a device sends; they carry ``(device, boot, seq)``."""

M = TypeVar("M", Telemetry, Status, Event, Command, Alert)


# --- codec ------------------------------------------------------------------------------------

Reason = Literal[
    "oversized", "not json", "no schema", "unknown major version", "bad field", "unexpected type"
]
REASONS: tuple[Reason, ...] = get_args(Reason)


class _Envelope(msgspec.Struct):
    """Only what is needed to pick a decoder; every other field is skipped."""

    type: object = None
    schema: object = None


_TYPES: dict[str, type[Message]] = {
    str(cls.__struct_config__.tag): cls for cls in (Telemetry, Status, Event, Command, Alert)
}
_ENCODER = msgspec.json.Encoder()
_ENVELOPE = msgspec.json.Decoder(_Envelope)
_DECODERS: dict[type[Message], msgspec.json.Decoder[Any]] = {
    cls: msgspec.json.Decoder(cls) for cls in _TYPES.values()
}
_VERSION = re.compile(r"([0-9]{1,9})\.([0-9]{1,9})")
_PREFIX: dict[type[Message], bytes] = {
    cls: b'{"type":"' + tag.encode() + b'","schema":"' for tag, cls in _TYPES.items()
}
"""How :func:`encode` starts each message: the tag and the schema are then surely there."""


def encode(msg: Message) -> bytes:
    """Compact JSON for ``msg``.

    Raises :class:`WireError` (a ``ValueError``) when the payload would be larger than
    :data:`MAX_PAYLOAD_BYTES` or :func:`decode` would refuse it (a negative count, an empty device
    id, NaN in a required float, which JSON carries as null), so a producer finds its bug at the
    source. Raises ``TypeError`` for values JSON cannot carry (numpy scalars, for instance).
    """
    payload = _ENCODER.encode(msg)
    decode(payload, type(msg))
    return payload


@overload
def decode(payload: bytes | bytearray | memoryview, expected: None = None) -> Message: ...
@overload
def decode(payload: bytes | bytearray | memoryview, expected: type[M]) -> M: ...
def decode(payload: bytes | bytearray | memoryview, expected: type[M] | None = None) -> Message:
    """Parse and validate one payload, as any message type or only as ``expected``.

    Checks, in order: size, JSON, the schema version (any ``1.x``; unknown fields are ignored),
    the ``type`` tag, then every field. Raises :class:`WireError` and nothing else for any bytes.
    """
    if expected is not None and expected not in _DECODERS:
        raise TypeError(f"not a message type: {expected!r}")
    size = memoryview(payload).nbytes
    if size > MAX_PAYLOAD_BYTES:
        raise WireError("oversized", f"{size} bytes, more than {MAX_PAYLOAD_BYTES}")
    if isinstance(payload, memoryview):
        payload = payload.tobytes()
    if _NUL_ESCAPE in payload:
        raise WireError("bad field", "a string holds NUL (\\u0000)")
    if expected is not None and payload.startswith(_PREFIX[expected]):
        # this module's own encoding (the type tag and the schema first): one pass, and only a
        # failure is decoded again to be classified
        try:
            msg: Message = _DECODERS[expected].decode(payload)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass
        else:
            _check_version(msg.schema)
            return msg
    try:
        env = _ENVELOPE.decode(payload)
    except msgspec.ValidationError as e:  # valid JSON, but not an object
        raise WireError("no schema", f"not a message object: {_clip(e)}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        raise WireError("not json", _json_problem(e)) from None
    _check_version(env.schema)
    cls = _message_type(env.type, expected)
    try:
        msg = _DECODERS[cls].decode(payload)
    except msgspec.ValidationError as e:
        raise WireError("bad field", _clip(e)) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as e:
        raise WireError("not json", _json_problem(e)) from None
    return msg


def _check_version(schema: object) -> None:
    if schema is None:
        raise WireError("no schema", "missing `schema` - at `$.schema`")
    m = _VERSION.fullmatch(schema) if isinstance(schema, str) else None
    if m is None:
        raise WireError(
            "bad field", f"malformed schema version {_clip(repr(schema))} - at `$.schema`"
        )
    if int(m.group(1)) != SCHEMA_MAJOR:
        raise WireError(
            "unknown major version", f"schema {schema}, this side reads {SCHEMA_MAJOR}.x"
        )


def _message_type(tag: object, expected: type[Message] | None) -> type[Message]:
    if tag is None:
        raise WireError("bad field", "missing `type` - at `$.type`")
    if not isinstance(tag, str):
        raise WireError("bad field", f"`type` is not a string - at `$.type`: {_clip(repr(tag))}")
    cls = _TYPES.get(tag)
    if cls is None:
        raise WireError("unexpected type", f"unknown message type {_clip(repr(tag))}")
    if expected is not None and cls is not expected:
        raise WireError("unexpected type", f"got {tag!r}, expected {expected.__name__}")
    return cls


def _json_problem(e: Exception) -> str:
    if isinstance(e, RecursionError):
        return "JSON nested too deeply"
    if isinstance(e, UnicodeDecodeError):
        return "a string is not valid UTF-8"
    return _clip(e)


def _clip(e: object, limit: int = 240) -> str:
    """One line, at most ``limit`` characters, keeping the end (where msgspec puts the path)."""
    text = str(e).replace("\r", "\\r").replace("\n", "\\n")
    if len(text) <= limit:
        return text
    half = (limit - 3) // 2
    return f"{text[:half]}...{text[-half:]}"


# --- consumer helpers -------------------------------------------------------------------------


@dataclass(slots=True)
class _BootWindow:
    top: int
    """The highest seq seen."""
    mask: int
    """Bit ``i`` set: seq ``top - i`` was seen."""


class Dedup:
    """Drops QoS 1 redeliveries by ``(device, boot, seq)`` with bounded memory.

    Per boot it keeps the highest seq and a bitmap of the ``window`` seqs below it, so
    out-of-order redeliveries within the window are caught. A seq older than the window is
    treated as already seen: a message is accepted at most once, at the price of refusing a
    message that arrives more than ``window`` seqs late. Boots are kept in LRU order, at most
    ``max_boots``; a redelivery for an evicted boot is accepted again. Not thread-safe.
    """

    def __init__(self, *, max_boots: int = 10_000, window: int = 1024) -> None:
        if max_boots < 1 or window < 1:
            raise ValueError("max_boots and window must be at least 1")
        self.max_boots = max_boots
        self.window = window
        self.duplicates = 0
        """How many times :meth:`seen` returned True."""
        self._full = (1 << window) - 1
        self._boots: OrderedDict[tuple[str, str], _BootWindow] = OrderedDict()

    def __len__(self) -> int:
        """Boots currently remembered."""
        return len(self._boots)

    def seen(self, msg: DeviceMessage) -> bool:
        """True when ``msg`` was seen before (drop it); otherwise remember it and return False."""
        if self._check((msg.device, msg.boot), msg.seq):
            self.duplicates += 1
            return True
        return False

    def _check(self, key: tuple[str, str], seq: int) -> bool:
        w = self._boots.get(key)
        if w is None:
            self._boots[key] = _BootWindow(top=seq, mask=1)
            if len(self._boots) > self.max_boots:
                self._boots.popitem(last=False)
            return False
        self._boots.move_to_end(key)
        ahead = seq - w.top
        if ahead > 0:
            w.mask = 1 if ahead >= self.window else ((w.mask << ahead) | 1) & self._full
            w.top = seq
            return False
        if -ahead >= self.window:
            return True
        bit = 1 << -ahead
        if w.mask & bit:
            return True
        w.mask |= bit
        return False


class WireStats:
    """Counts of accepted messages and of refused ones by reason. Not thread-safe."""

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected: dict[Reason, int] = dict.fromkeys(REASONS, 0)

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())

    def accept(self) -> None:
        self.accepted += 1

    def reject(self, error: WireError) -> None:
        self.rejected[cast("Reason", error.reason)] += 1

    @overload
    def decode(
        self, payload: bytes | bytearray | memoryview, expected: None = None, *, topic: str = ""
    ) -> Message | None: ...
    @overload
    def decode(
        self, payload: bytes | bytearray | memoryview, expected: type[M], *, topic: str = ""
    ) -> M | None: ...
    def decode(
        self,
        payload: bytes | bytearray | memoryview,
        expected: type[M] | None = None,
        *,
        topic: str = "",
    ) -> Message | None:
        """:func:`decode`, counting the outcome; a refusal is logged (one line) and gives None."""
        try:
            msg = decode(payload) if expected is None else decode(payload, expected)
        except WireError as e:
            self.reject(e)
            log.warning("refused message on %s: %s", topic or "?", e)
            return None
        self.accept()
        return msg

    def as_dict(self) -> dict[str, int]:
        """``accepted`` and one count per reason, for metrics and logs."""
        return {"accepted": self.accepted} | {str(r): n for r, n in self.rejected.items()}
