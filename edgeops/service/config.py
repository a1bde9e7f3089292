"""The service's typed configuration: command-line options, or a TOML file for per-model policies.

::

    broker = "mqtts://broker.example:8883"
    db = "sqlite:///edgeops.db"          # or postgresql://user:pass@host/db
    group = "edgeops-service"            # processes in one group split the fleet's load
    command_key = "/etc/edgeops/command.key"   # signs commands; devices trust command.pub

    [mqtt]                               # the service's broker account (edgeops.core.broker)
    username = "edgeops-service"
    password_file = "/etc/edgeops/service.mqtt-password"   # or EDGEOPS_MQTT_PASSWORD
    ca = "/etc/edgeops/ca.crt"

    [drift]                              # defaults for every model
    js = 0.1
    min_samples = 500
    k_raise = 2
    k_clear = 2

    [rollout]                            # deployments started by an alert action
    stages = [10, 50, 100]
    bake = 60

    [intake]                             # what one device may send (see IntakeLimits)
    device_rate = 5.0
    max_clock_skew = 300

    [retention]                          # days kept (see Retention)
    windows = 14
    dead_letters = 7

    [models.digits]                      # per model name
    drift = { js = 0.15 }
    latency_budget_ms = 5.0
    alert_on = ["deploy"]                # which verdicts alert: "training", "deploy" or both
    reference = { rows = 2000, min_windows = 4 }
    on_alert = { command = ["./retrain.sh"], deploy = "digits-2.0.0" }

``alert_on`` and ``reference`` may also stand at the top level (defaults for every model).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

from edgeops.core.broker import BrokerSettings, read_secret
from edgeops.core.errors import UsageError
from edgeops.drift import DriftThresholds
from edgeops.service.rollout_policy import RolloutPolicy

T = TypeVar("T")


@dataclass(frozen=True)
class AlertAction:
    """What to do when an alert of a model is raised."""

    command: tuple[str, ...] = ()
    """Run this program; the alert is in the environment as ``EDGEOPS_ALERT`` (JSON)."""
    deploy: str | None = None
    """Deploy this bundle (NAME-VERSION) through a staged rollout."""


DEFAULT_THRESHOLDS = DriftThresholds()
"""The library's defaults (K = 2: drift alerts within two evaluations)."""

ReferenceKind = Literal["training", "deploy"]
"""What a verdict compares with: the bundle's training baseline ("differs from training data")
or the device's own first healthy windows on the version ("changed since deploy")."""
REFERENCE_KINDS: tuple[ReferenceKind, ...] = get_args(ReferenceKind)


@dataclass(frozen=True)
class ReferencePolicy:
    """A device's own reference for "changed since deploy": its first healthy windows (served
    without errors or bad inputs) after it starts running a model version."""

    rows: int = 2000
    """Rows it takes (four spans of the default ``min_samples``)."""
    min_windows: int = 4
    """Windows it takes at least, so that the spread between them (the design effect of the
    device's clustered rows) can be estimated."""

    def __post_init__(self) -> None:
        if self.rows < 1 or self.min_windows < 1:
            raise ValueError("reference rows and min_windows must be at least 1")


@dataclass(frozen=True)
class IntakeLimits:
    """Bounds on what devices may send; a message past one is refused, counted by reason and
    (for a malformed or inconsistent one) kept as a dead letter."""

    max_clock_skew: float = 300.0
    """Seconds a message's times may be ahead of the service's clock."""
    max_age: float | None = None
    """Seconds a message's times may be behind the service's clock (default: the windows'
    retention; an outbox drained after a long outage stays within it)."""
    device_rate: float = 5.0
    """Messages per second one device may sustain (a token bucket)..."""
    device_burst: int = 5000
    """...after a burst of this many (a drained outbox)."""
    new_devices_per_minute: int = 10_000
    """Device ids never seen before that are admitted per minute (a burst of as many)."""
    queue_bytes: int = 64 * 1024 * 1024
    """Payload bytes waiting to be stored; past it the MQTT thread waits and the broker holds
    the rest (QoS 1)."""
    batch_size: int = 500
    """The most messages stored in one transaction."""
    dead_letter_rate: float = 10.0
    """Dead letters kept per second (a burst of ``dead_letter_burst``); past it a refused
    message is only counted."""
    dead_letter_burst: int = 1000
    dead_letter_bytes: int = 16 * 1024
    """The most payload bytes kept of one dead letter (its size and sha256 are kept whole)."""
    stall_seconds: float = 60.0
    """A worker silent this long while it has work makes the service not ready (``/readyz``)."""
    stall_exit_seconds: float = 600.0
    """...and this long makes ``edgeops serve`` exit non-zero (a supervisor restarts it)."""

    def __post_init__(self) -> None:
        for name in ("max_clock_skew", "device_rate", "dead_letter_rate", "stall_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("device_burst", "new_devices_per_minute", "queue_bytes", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_age is not None and not self.max_age > 0:
            raise ValueError("max_age must be positive")
        if self.stall_exit_seconds < self.stall_seconds:
            raise ValueError("stall_exit_seconds must be at least stall_seconds")


@dataclass(frozen=True)
class Retention:
    """How long stored rows are kept, in days, and how often they are purged."""

    windows: float = 14.0
    events: float = 30.0
    drift: float = 14.0
    alerts: float = 90.0
    """Cleared alerts; active ones are kept."""
    dead_letters: float = 7.0
    dead_letter_rows: int = 10_000
    """The most dead letters kept (the oldest go first)."""
    interval: float = 300.0
    """Seconds between purges."""

    def __post_init__(self) -> None:
        for name in ("windows", "events", "drift", "alerts", "dead_letters", "interval"):
            if not getattr(self, name) > 0:
                raise ValueError(f"retention {name} must be positive")
        if self.dead_letter_rows < 1:
            raise ValueError("retention dead_letter_rows must be at least 1")


@dataclass(frozen=True)
class ModelPolicy:
    drift: DriftThresholds = field(default_factory=lambda: DEFAULT_THRESHOLDS)
    latency_budget_ms: float | None = None
    on_alert: AlertAction = field(default_factory=AlertAction)
    alert_on: tuple[ReferenceKind, ...] = REFERENCE_KINDS
    """The verdicts that raise alerts: ``"training"`` (the span differs from the bundle's
    training data), ``"deploy"`` (the span changed since the device's first windows on the
    version), or both (the default). Both are always evaluated and stored. A model retrained on
    a mixture of populations, deployed to devices that each see one, alerts only on
    ``"deploy"``. Concept drift and latency alert either way."""
    reference: ReferencePolicy = field(default_factory=ReferencePolicy)

    def __post_init__(self) -> None:
        if not self.alert_on or any(k not in REFERENCE_KINDS for k in self.alert_on):
            raise ValueError(f"alert_on: expected some of {list(REFERENCE_KINDS)}")


@dataclass(frozen=True)
class ServiceConfig:
    broker: BrokerSettings | str = "mqtt://localhost:1883"
    """The broker's URL, or its whole settings (credentials, TLS): see :attr:`mqtt`."""
    db: str = "sqlite:///edgeops.db"
    group: str = "edgeops-service"
    """MQTT 5 shared-subscription group; processes in one group split the load."""
    client_id: str | None = None
    """The MQTT client id. A restarted process with the same id resumes its persistent session
    (what the broker queued while it was down); ``edgeops serve`` uses GROUP-HOST-HTTPPORT.
    Unset: a random id (a new session each start)."""
    fleet: str = "+"
    """The fleet to watch (``+``: all)."""
    http_host: str = "127.0.0.1"
    http_port: int = 8480
    http_cert: Path | None = None
    """The REST API's TLS certificate (PEM, its chain after it): with ``http_key`` the API
    serves HTTPS only."""
    http_key: Path | None = None
    insecure_api: bool = False
    """Serve the REST API without tokens (every route open; logged as a warning at start)."""
    bundle_link_seconds: float = 900.0
    """How long the download link in an update command works (a resent command carries a new
    one; a device's download, resumes included, must start and end within it)."""
    span_seconds: float = 600.0
    """The longest span of windows merged for one drift evaluation."""
    span_windows: int = 30
    """The most windows merged for one evaluation (fewer when they reach ``min_samples``)."""
    fleet_interval: float = 10.0
    """Seconds between fleet-wide evaluations."""
    public_url: str | None = None
    """The REST API's address as devices reach it (bundle downloads); default: where it
    listens."""
    rollout_interval: float = 0.5
    """Seconds between steps of the active deployments."""
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    """The policy of deployments started by an alert action (``[rollout]`` in the file)."""
    bundles: tuple[Path, ...] = ()
    """Bundles to register at start (their baselines are what drift is measured against)."""
    trusted_keys: tuple[Path, ...] = ()
    allow_unsigned: bool = False
    command_key: Path | None = None
    """The private key that signs commands to devices (``edgeops keys generate --name
    command``; not a bundle key). None: commands go out unsigned, and devices refuse them
    unless they are in development mode."""
    default: ModelPolicy = field(default_factory=ModelPolicy)
    models: Mapping[str, ModelPolicy] = field(default_factory=dict)
    intake: IntakeLimits = field(default_factory=IntakeLimits)
    retention: Retention = field(default_factory=Retention)
    evaluation_workers: int = 1
    """Threads evaluating drift (off the store loop; more help on PostgreSQL)."""

    def __post_init__(self) -> None:
        if not self.bundle_link_seconds > 0:
            raise UsageError("bundle_link_seconds must be positive")

    def policy(self, model: str) -> ModelPolicy:
        return self.models.get(model, self.default)

    @property
    def max_age(self) -> float:
        """Seconds a message's times may be behind the service's clock."""
        limit = self.intake.max_age
        return self.retention.windows * 86400.0 if limit is None else limit

    @property
    def mqtt(self) -> BrokerSettings:
        """How the service reaches the broker."""
        b = self.broker
        return b if isinstance(b, BrokerSettings) else BrokerSettings(b)

    @property
    def broker_host_port(self) -> tuple[str, int]:
        return self.mqtt.address


def _thresholds(base: DriftThresholds, values: Mapping[str, Any], where: str) -> DriftThresholds:
    known = {f.name for f in fields(DriftThresholds)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{where}: unknown drift setting(s): {', '.join(unknown)}")
    try:
        return replace(base, **values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None


def _section(kind: type[T], values: Any, where: str) -> T:
    if not isinstance(values, Mapping):
        raise UsageError(f"{where}: expected a table of settings")
    known = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{where}: unknown setting(s): {', '.join(unknown)}")
    try:
        return kind(**values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None


def _policy(base: ModelPolicy, values: Mapping[str, Any], where: str) -> ModelPolicy:
    known = {"drift", "latency_budget_ms", "on_alert", "alert_on", "reference"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s): {', '.join(unknown)}")
    p = base
    if "drift" in values:
        p = replace(p, drift=_thresholds(p.drift, values["drift"], where))
    if "latency_budget_ms" in values:
        p = replace(p, latency_budget_ms=float(values["latency_budget_ms"]))
    if "alert_on" in values:
        kinds = values["alert_on"]
        kinds = [kinds] if isinstance(kinds, str) else kinds
        try:
            p = replace(p, alert_on=tuple(kinds))
        except (TypeError, ValueError) as e:
            raise UsageError(f"{where}: {e}") from None
    if "reference" in values:
        ref = _section(ReferencePolicy, values["reference"], f"{where} reference")
        p = replace(p, reference=ref)
    if "on_alert" in values:
        a = values["on_alert"]
        cmd = a.get("command", ())
        p = replace(
            p,
            on_alert=AlertAction(
                command=tuple(str(c) for c in ([cmd] if isinstance(cmd, str) else cmd)),
                deploy=a.get("deploy"),
            ),
        )
    return p


def load_service_config(
    path: Path | None,
    *,
    mqtt: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServiceConfig:
    """The config file (optional), then ``EDGEOPS_MQTT_*`` variables (``env``, default the
    process's), then command-line ``overrides`` (None values ignored; ``mqtt`` holds the broker
    settings given on the command line: ``url``, ``username``, ``ca``, ``cert``, ``key``,
    ``password_file``)."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path}: no such config file") from None
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise UsageError(f"{path}: {e}") from None
    cfg = ServiceConfig()
    simple = {f.name for f in fields(ServiceConfig)} - {
        "broker",
        "default",
        "models",
        "bundles",
        "trusted_keys",
        "command_key",
        "rollout",
        "intake",
        "retention",
        "http_cert",
        "http_key",
    }
    for k in list(data):
        if k in simple:
            cfg = replace(cfg, **{k: data.pop(k)})
    default = cfg.default
    if "drift" in data:
        default = replace(default, drift=_thresholds(default.drift, data.pop("drift"), "[drift]"))
    if "latency_budget_ms" in data:
        default = replace(default, latency_budget_ms=float(data.pop("latency_budget_ms")))
    shared: dict[str, Any] = {k: data.pop(k) for k in ("alert_on", "reference") if k in data}
    if shared:
        default = _policy(default, shared, "config")
    models = {
        name: _policy(default, values, f"[models.{name}]")
        for name, values in data.pop("models", {}).items()
    }
    if "rollout" in data:
        cfg = replace(cfg, rollout=RolloutPolicy.from_dict(data.pop("rollout")))
    if "intake" in data:
        cfg = replace(cfg, intake=_section(IntakeLimits, data.pop("intake"), "[intake]"))
    if "retention" in data:
        cfg = replace(cfg, retention=_section(Retention, data.pop("retention"), "[retention]"))
    table = dict(data.pop("mqtt", {}))
    if "broker" in data:
        table.setdefault("url", data.pop("broker"))
    broker_table = BrokerSettings.from_mapping(table)
    if "bundles" in data:
        cfg = replace(cfg, bundles=tuple(Path(p) for p in data.pop("bundles")))
    if "http_cert" in data:
        cfg = replace(cfg, http_cert=Path(data.pop("http_cert")))
    if "http_key" in data:
        cfg = replace(cfg, http_key=Path(data.pop("http_key")))
    if "trusted_keys" in data:
        cfg = replace(cfg, trusted_keys=tuple(Path(p) for p in data.pop("trusted_keys")))
    if "command_key" in data:
        cfg = replace(cfg, command_key=Path(data.pop("command_key")))
    if data:
        raise UsageError(f"config: unknown key(s): {', '.join(sorted(data))}")
    cfg = replace(cfg, default=default, models=models)
    for k, v in overrides.items():
        if v is not None and v != ():
            cfg = replace(cfg, **{k: v})
    broker = broker_table.with_env(env)
    given = dict(mqtt or {})
    if given.get("password_file") is not None:
        given["password"] = read_secret(Path(given.pop("password_file")), "--mqtt-password-file")
    given.pop("password_file", None)
    broker = broker.with_overrides(**given)
    return replace(cfg, broker=broker)
