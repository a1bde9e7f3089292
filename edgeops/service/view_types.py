"""The bodies of the dashboard's data endpoints (``/v1/views/…``), typed like the rest of the
API (:mod:`edgeops.service.api_types`) so that ``/openapi.json`` describes them.

Time series are columns (``t`` and one list per measure, ``None`` where a bucket has no value):
what a chart library draws without reshaping.
"""

from __future__ import annotations

import msgspec

from edgeops.service.api_types import Alert, DeploymentRow, Device, Event, FleetDevice, Lineage


class VersionCount(msgspec.Struct):
    """Devices on one model version (``model_name`` None: no model reported yet)."""

    fleet: str
    model_name: str | None
    model_version: str | None
    devices: int
    online: int


class Overview(msgspec.Struct):
    """``GET /v1/views/fleet``: the fleet at a glance."""

    now: float
    online: int
    offline: int
    devices: list[FleetDevice]
    versions: list[VersionCount]
    alerts: list[Alert]
    """Active alerts, newest first."""
    deployments: list[DeploymentRow]
    """Deployments in progress (running or aborting)."""


class Activity(msgspec.Struct):
    """A device's traffic per time bucket (the service's clock, bucket end in ``t``); latency
    percentiles from the bucket's windows' histograms merged, never averaged."""

    t: list[float]
    predictions_per_s: list[float]
    errors: list[int]
    bad_inputs: list[int]
    p50_ms: list[float | None]
    p95_ms: list[float | None]


class TestSeries(msgspec.Struct):
    """One check of a feature over time: its value, the fixed threshold and the noise floor
    (a check is over when its value reaches the larger of the two)."""

    test: str
    value: list[float | None]
    threshold: list[float | None]
    floor: list[float | None]


class DriftSeries(msgspec.Struct):
    """One feature's verdicts over time, against one reference (``training`` or ``deploy``;
    empty for concept drift and latency), with each check that decides."""

    feature: str
    kind: str
    reference: str
    model_version: str
    t: list[float]
    drifted: list[bool | None]
    samples: list[int]
    tests: list[TestSeries]


class ModelSpan(msgspec.Struct):
    """A model version a device ran within the view's span, from its windows."""

    model_name: str | None
    model_version: str | None
    first: float
    last: float
    windows: int


class DeviceDeployment(msgspec.Struct):
    """A deployment that included the device, and what happened to it there."""

    id: str
    model_name: str
    model_version: str
    from_version: str | None
    state: str
    """The device's state in it (pending, sent, committed, failed, rolled-back, ...)."""
    deployment_state: str
    created: float
    decided: float | None
    reason: str | None


class DeviceView(msgspec.Struct):
    """``GET /v1/views/devices/{device}``: one device over the last ``hours``."""

    now: float
    since: float
    bucket_s: float
    device: Device
    activity: Activity
    drift: list[DriftSeries]
    alerts: list[Alert]
    """Every alert raised or active within the span, oldest first (the timeline)."""
    events: list[Event]
    """The newest events, newest first."""
    models: list[ModelSpan]
    deployments: list[DeviceDeployment]


class Fidelity(msgspec.Struct):
    """The conversion's fidelity from the bundle's report (None where not measured)."""

    samples: int | None = None
    agreement: float | None = None
    source_accuracy: float | None = None
    converted_accuracy: float | None = None
    accuracy_drop_points: float | None = None
    min_snr_db: float | None = None
    source_mae: float | None = None
    converted_mae: float | None = None


class Conversion(msgspec.Struct):
    """The conversion's outcome from the bundle's report."""

    status: str | None = None
    """pass, or why a gate failed."""
    size_ratio: float | None = None
    """The converted model's size over the source's."""


class ModelVersion(msgspec.Struct):
    version: str
    registered: float
    model_sha256: str
    bundle_sha256: str | None
    bundle_size: int | None
    lineage: Lineage
    fidelity: Fidelity | None
    """None when the conversion measured none (no labelled validation data given)."""
    conversion: Conversion | None
    devices: dict[str, int]
    """Devices running it, per fleet."""
    running_on: list[str]
    """``fleet/device`` of each device that runs it (at most 200)."""


class ModelView(msgspec.Struct):
    """``GET /v1/views/models/{name}``: a model's versions, lineage, fidelity, where each runs."""

    name: str
    versions: list[ModelVersion]
    """Oldest first."""


class Whoami(msgspec.Struct):
    """``GET /v1/whoami``: the token's name and role (the dashboard shows abort to deploy)."""

    name: str
    role: str
