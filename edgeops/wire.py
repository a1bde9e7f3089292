"""The MQTT wire protocol: typed, versioned messages and the one place that encodes and decodes them.

Every message is a frozen :mod:`msgspec` struct tagged by a ``type`` field. Device messages carry
the schema version, the device id, the boot id (new on every start) and a sequence number that
increases within a boot, so a consumer can drop QoS 1 duplicates by ``(device, boot, seq)``.

Versioning: ``schema`` is ``"MAJOR.MINOR"``. A consumer accepts any minor version of its major
(unknown fields are ignored) and refuses another major.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1
MAX_PAYLOAD_BYTES = 256 * 1024
"""Larger payloads are refused by :func:`decode` (and never produced by :func:`encode`)."""


class _Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    schema: str = SCHEMA_VERSION


class _DeviceMessage(_Message, frozen=True, kw_only=True):
    device: str
    boot: str
    """A random id chosen at each agent start."""
    seq: int
    """Increases by one per message within a boot."""
    sent: float
    """Unix time (seconds) when the message was made."""


# --- telemetry window parts -------------------------------------------------------------------


class ModelRef(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str
    sha256: str


class LatencyHistogram(msgspec.Struct, frozen=True, kw_only=True):
    """Latencies in milliseconds in log-spaced buckets with bounded relative error.

    ``gamma = (1 + relative_accuracy) / (1 - relative_accuracy)``; bucket ``i`` holds the values in
    ``(gamma ** (i - 1), gamma ** i]``; values at or below ``min_value`` are counted in ``zero``.
    Histograms with the same ``relative_accuracy`` merge by adding counts.
    """

    relative_accuracy: float
    buckets: dict[int, int]
    zero: int = 0
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    min_value: float = 1e-6


class NumericWindow(msgspec.Struct, frozen=True, kw_only=True, tag="numeric"):
    """One numeric feature (or image reduction, or regression output) over a window.

    ``counts`` are per bin of the baseline's edges (``len(edges) + 1`` bins, open tails);
    ``out_of_range`` counts values outside the baseline's [min, max]; moments are mergeable.
    """

    name: str
    counts: list[int]
    missing: int = 0
    out_of_range: int = 0
    count: int = 0
    mean: float | None = None
    m2: float = 0.0
    min: float | None = None
    max: float | None = None


class CategoricalWindow(msgspec.Struct, frozen=True, kw_only=True, tag="categorical"):
    """One categorical feature: counts per baseline category, then other and missing."""

    name: str
    counts: list[int]
    other: int = 0
    missing: int = 0


class ClassOutputWindow(msgspec.Struct, frozen=True, kw_only=True, tag="class_output"):
    """A classifier's predicted-class counts and confidence histogram (baseline edges)."""

    name: str
    class_counts: list[int]
    confidence_counts: list[int]


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    """Labels sent later for earlier predictions: how many were right."""

    correct: int = 0
    total: int = 0


class ProcessStats(msgspec.Struct, frozen=True, kw_only=True):
    cpu_percent: float = 0.0
    rss_bytes: int = 0


class OutboxStats(msgspec.Struct, frozen=True, kw_only=True):
    pending: int = 0
    dropped: int = 0
    """Messages dropped since the outbox was created because it was full (oldest first)."""


InputWindow = NumericWindow | CategoricalWindow
OutputWindow = NumericWindow | ClassOutputWindow


# --- device messages --------------------------------------------------------------------------


class Telemetry(_DeviceMessage, frozen=True, kw_only=True, tag="telemetry"):
    """One measurement window."""

    window_start: float
    window_end: float
    model: ModelRef | None
    count: int
    """Predictions served (samples, not calls)."""
    errors: int
    """Predictions that failed inside the runtime."""
    bad_inputs: int
    """Calls refused for their input (wrong shape, dtype, NaN where not allowed)."""
    latency: LatencyHistogram
    inputs: list[InputWindow] = msgspec.field(default_factory=list)
    outputs: list[OutputWindow] = msgspec.field(default_factory=list)
    feedback: Feedback = msgspec.field(default_factory=Feedback)
    process: ProcessStats = msgspec.field(default_factory=ProcessStats)
    outbox: OutboxStats = msgspec.field(default_factory=OutboxStats)

    @property
    def throughput(self) -> float:
        """Predictions per second over the window."""
        span = self.window_end - self.window_start
        return self.count / span if span > 0 else 0.0


class Status(_DeviceMessage, frozen=True, kw_only=True, tag="status"):
    """Presence: the birth message (online) and the last will (offline), retained."""

    online: bool
    model: ModelRef | None = None
    agent_version: str = ""
    started: float = 0.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """Device labels, for rollouts that target a label selector."""


class Event(_DeviceMessage, frozen=True, kw_only=True, tag="event"):
    """Something that happened: a command's result, an update's progress, an error."""

    kind: str
    level: Literal["info", "warning", "error"] = "info"
    message: str = ""
    command_id: str | None = None
    data: dict[str, Any] = msgspec.field(default_factory=dict)


# --- service messages -------------------------------------------------------------------------

CommandKind = Literal["update", "rollback", "set-config", "ping"]


class Command(_Message, frozen=True, kw_only=True, tag="command"):
    """An instruction to one device."""

    id: str
    kind: CommandKind
    issued: float
    args: dict[str, Any] = msgspec.field(default_factory=dict)


Message = Telemetry | Status | Event | Command
