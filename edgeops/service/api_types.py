"""The REST API's request and response bodies, typed (msgspec), so that ``/openapi.json``
describes them and every answer is checked against its type before it is sent.

The store's rows become these records at the API's edge (:func:`typed`). Three fields are
JSON objects as they were stored: an event's ``data`` (its kind's record,
:mod:`edgeops.core.events`, or, from an agent this service does not understand, whatever it sent),
a deployment device's ``health`` (:class:`edgeops.core.events.HealthOutcome` as the device reported
it; older rows as they were stored), and an alert's ``detail`` (the distances of its kind of
check).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec

T = TypeVar("T")

JsonObject = dict[str, Any]


def typed(value: Any, kind: type[T]) -> T:
    """``value`` (rows as the store returns them) as ``kind``; a value that does not fit is a
    bug, raised as :class:`msgspec.ValidationError`. (Builtins first: the database's column
    names are a subclass of ``str`` that msgspec does not take as a key.)"""
    return msgspec.convert(msgspec.to_builtins(value), kind)


class ApiError(msgspec.Struct):
    """Every refusal: one line saying why."""

    error: str


# --- devices, alerts, drift ---------------------------------------------------------------------


class Device(msgspec.Struct):
    """A device as its status messages and windows left it."""

    fleet: str
    device: str
    online: bool
    boot: str | None
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    agent_version: str | None
    labels: dict[str, str] | None
    first_seen: float
    last_seen: float
    status_sent: float | None


class FleetDevice(Device):
    active_alerts: int = 0


class Alert(msgspec.Struct):
    id: int
    key: str
    scope: str
    fleet: str
    device: str
    model_name: str
    model_version: str
    feature: str
    kind: str
    raised: float
    cleared: float | None
    detail: JsonObject | None
    reference: str
    """``training``, ``deploy`` or empty (concept drift, latency)."""
    cleared_reason: str | None


class Fleet(msgspec.Struct):
    devices: list[FleetDevice]
    fleet_alerts: list[Alert]
    now: float


class Check(msgspec.Struct):
    """One test of a feature: its value, the fixed threshold and the noise floor."""

    test: str
    value: float
    threshold: float
    floor: float
    decides: bool
    over: bool
    note: str = ""


class DriftRow(msgspec.Struct):
    id: int
    evaluated: float
    scope: str
    fleet: str
    device: str
    model_name: str
    model_version: str
    feature: str
    kind: str
    samples: int
    js: float | None
    psi: float | None
    wasserstein: float | None
    linf: float | None
    value: float | None
    drifted: bool | None
    reason: str | None
    reference: str
    checks: list[Check] | None


class Reference(msgspec.Struct):
    """A device's own reference on a model version (its first healthy windows)."""

    fleet: str
    device: str
    model_name: str
    model_version: str
    state: str
    rows: int
    started: float
    ready: float | None


class Drift(msgspec.Struct):
    drift: list[DriftRow]
    blind_spots: dict[str, dict[str, str]]
    """Per "NAME VERSION": the baseline's features whose drift cannot fully show, and why."""
    references: list[Reference]


class Alerts(msgspec.Struct):
    alerts: list[Alert]


class Event(msgspec.Struct):
    id: int
    fleet: str
    device: str
    boot: str
    seq: int
    sent: float
    kind: str
    level: str
    message: str
    command_id: str | None
    data: JsonObject | None


class Latency(msgspec.Struct):
    windows: int
    count: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class DeviceSummary(msgspec.Struct):
    device: Device
    latency: Latency | None
    """Over the recent windows; null when they served no prediction."""
    predictions: int
    errors: int
    bad_inputs: int
    alerts: list[Alert]
    drift: list[DriftRow]
    events: list[Event]


# --- models and bundles -------------------------------------------------------------------------


class Lineage(msgspec.Struct):
    parent: str | None
    run: str | None
    created: str | None
    format: str | None
    mode: str | None
    accuracy: float | None


class Model(msgspec.Struct):
    name: str
    version: str
    model_sha256: str
    registered: float
    bundle_sha256: str | None
    bundle_size: int | None
    lineage: Lineage
    devices: dict[str, int]
    """Devices running it, per fleet."""


class Models(msgspec.Struct):
    models: list[Model]


class Registered(msgspec.Struct):
    name: str
    version: str


# --- intake, health -----------------------------------------------------------------------------


class EvaluationStats(msgspec.Struct):
    evaluations: int
    evaluation_errors: int
    pending: int
    coalesced: int
    dropped: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    duration_p50_s: float | None
    duration_p95_s: float | None


class BrokerState(msgspec.Struct):
    connected: bool
    connect_failures: int
    problem: str | None


class StatsQueue(msgspec.Struct):
    messages: int
    bytes: int
    lag_s: float


class Stats(msgspec.Struct):
    """This process's intake since it started."""

    received: int
    stored_windows: int
    stored_events: int
    statuses: int
    duplicates: int
    storage_retries: int
    dead_letters: int
    dead_letters_dropped: int
    evaluation_errors: int
    untyped_events: int
    """Events stored whose data is not their kind's record (an unknown kind, or data that does
    not fit it): kept as sent, nothing read from their data."""
    rejected: dict[str, int]
    """Refused messages per reason."""
    rejected_total: int
    evaluation: EvaluationStats
    decoded: dict[str, int]
    broker: BrokerState
    purged: dict[str, int]
    queue: StatsQueue


class DeadLetter(msgspec.Struct):
    id: int
    received: float
    topic: str
    reason: str
    detail: str
    size: int
    sha256: str
    payload: str
    """Its first bytes, undecodable ones escaped."""


class DeadLetters(msgspec.Struct):
    dead_letters: list[DeadLetter]


class HealthChecks(msgspec.Struct):
    broker: bool
    database: bool
    workers: bool


class HealthQueue(msgspec.Struct):
    messages: int
    bytes: int


class Health(msgspec.Struct):
    alive: bool
    """No worker has failed for good."""
    ready: bool
    """Alive, connected to the broker, the database answers, no worker stalled."""
    checks: HealthChecks
    problems: list[str]
    last_stored: float | None
    lag_s: float
    queue: HealthQueue
    evaluation: EvaluationStats
    restarts: int


# --- deployments --------------------------------------------------------------------------------


class PolicyRequest(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A rollout policy in a request; a field left out takes
    :class:`edgeops.service.rollout_policy.RolloutPolicy`'s default."""

    stages: list[float] | msgspec.UnsetType = msgspec.UNSET
    stage_counts: bool | msgspec.UnsetType = msgspec.UNSET
    success_threshold: float | msgspec.UnsetType = msgspec.UNSET
    abort_failure_rate: float | msgspec.UnsetType = msgspec.UNSET
    min_devices: int | msgspec.UnsetType = msgspec.UNSET
    bake: float | msgspec.UnsetType = msgspec.UNSET
    timeout: float | msgspec.UnsetType = msgspec.UNSET
    on_timeout: Literal["fail", "skip"] | msgspec.UnsetType = msgspec.UNSET
    max_error_rate: float | msgspec.UnsetType | None = msgspec.UNSET
    max_latency_regression: float | msgspec.UnsetType | None = msgspec.UNSET
    health_predictions: int | msgspec.UnsetType | None = msgspec.UNSET
    health_seconds: float | msgspec.UnsetType | None = msgspec.UNSET
    resend: float | msgspec.UnsetType = msgspec.UNSET

    def given(self) -> dict[str, Any]:
        """The fields the request set."""
        return {
            f: v for f in self.__struct_fields__ if (v := getattr(self, f)) is not msgspec.UNSET
        }


class DeploymentRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/deployments``."""

    bundle: str
    """A registered bundle: NAME-VERSION or NAME:VERSION."""
    fleet: str
    devices: list[str] = msgspec.field(default_factory=list)
    """Only these devices (default: every device of the fleet running the model)."""
    selector: dict[str, str] | None = None
    """Only devices with these labels."""
    policy: PolicyRequest | None = None


class DeviceCommandRequest(msgspec.Struct, forbid_unknown_fields=True):
    """``POST /v1/devices/{device}/commands``: a ``ping``, or a ``set-config`` with at least one
    setting (bounded as the wire bounds them: ``window_seconds`` 1 to 3600, ``sample_rate`` 0
    to 1). Updates and rollbacks go through a deployment."""

    kind: Literal["ping", "set-config"]
    window_seconds: float | None = None
    sample_rate: float | None = None
    valid_for: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 300.0
    """Seconds the device may act on it; later it refuses it as expired."""


class CommandSent(msgspec.Struct):
    """A command as the service signed and published it; the device answers with an event
    (``KIND-done``, ``KIND-failed`` or ``command-rejected``) that carries its ``id``."""

    id: str
    fleet: str
    device: str
    kind: str
    counter: int
    issued: float
    deadline: float
    key: str | None
    """The command key that signed it; None: sent unsigned (development)."""


class Policy(msgspec.Struct):
    """A deployment's rollout policy (:class:`edgeops.service.rollout_policy.RolloutPolicy`)."""

    stages: list[float]
    stage_counts: bool
    success_threshold: float
    abort_failure_rate: float
    min_devices: int
    bake: float
    timeout: float
    on_timeout: str
    max_error_rate: float | None
    max_latency_regression: float | None
    health_predictions: int | None
    health_seconds: float | None
    resend: float


class Target(msgspec.Struct):
    devices: list[str]
    selector: dict[str, str]
    model_sha256: str
    size: int
    already: int
    """Targets already running the bundle's model when it started."""


class Deployment(msgspec.Struct):
    id: str
    fleet: str
    model_name: str
    model_version: str
    bundle_sha256: str
    target: Target
    policy: Policy
    trigger: str
    state: str
    """running, aborting, completed or aborted."""
    stage: int
    stage_sizes: list[int]
    """Cumulative device counts."""
    stage_started: float
    bake_until: float | None
    reason: str | None
    created: float
    updated: float
    finished: float | None


class DeploymentRow(Deployment):
    devices: dict[str, int]
    """Devices per state."""


class Deployments(msgspec.Struct):
    deployments: list[DeploymentRow]


class Tally(msgspec.Struct):
    sent: int
    committed: int
    failed: int
    decided: int
    undecided: int


class DeviceState(msgspec.Struct):
    device: str
    stage: int
    state: str
    from_version: str | None
    sent: float | None
    decided: float | None
    reason: str | None
    health: JsonObject | None


class DeploymentStatus(Deployment):
    history: list[tuple[float, str, str]]
    """(time, state, what happened)."""
    stages: int
    counts: dict[str, int]
    """Devices per state."""
    tally: Tally
    device_states: list[DeviceState]
