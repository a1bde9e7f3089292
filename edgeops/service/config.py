"""The service's typed configuration: command-line options, or a TOML file for per-model policies.

::

    broker = "mqtt://localhost:1883"
    db = "sqlite:///edgeops.db"          # or postgresql://user:pass@host/db
    group = "edgeops-service"            # processes in one group split the fleet's load

    [drift]                              # defaults for every model
    js = 0.1
    min_samples = 500
    k_raise = 2
    k_clear = 2

    [rollout]                            # deployments started by an alert action
    stages = [10, 50, 100]
    bake = 60

    [models.digits]                      # per model name
    drift = { js = 0.15 }
    latency_budget_ms = 5.0
    on_alert = { command = ["./retrain.sh"], deploy = "digits-2.0.0" }
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeops.drift import DriftThresholds
from edgeops.errors import UsageError
from edgeops.rollout import RolloutPolicy


@dataclass(frozen=True)
class AlertAction:
    """What to do when an alert of a model is raised."""

    command: tuple[str, ...] = ()
    """Run this program; the alert is in the environment as ``EDGEOPS_ALERT`` (JSON)."""
    deploy: str | None = None
    """Deploy this bundle (NAME-VERSION) through a staged rollout."""


DEFAULT_THRESHOLDS = DriftThresholds(k_raise=2, k_clear=2)
"""The design's defaults; K = 2 so that drift alerts within two windows."""


@dataclass(frozen=True)
class ModelPolicy:
    drift: DriftThresholds = field(default_factory=lambda: DEFAULT_THRESHOLDS)
    latency_budget_ms: float | None = None
    on_alert: AlertAction = field(default_factory=AlertAction)


@dataclass(frozen=True)
class ServiceConfig:
    broker: str = "mqtt://localhost:1883"
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
    default: ModelPolicy = field(default_factory=ModelPolicy)
    models: Mapping[str, ModelPolicy] = field(default_factory=dict)

    def policy(self, model: str) -> ModelPolicy:
        return self.models.get(model, self.default)

    @property
    def broker_host_port(self) -> tuple[str, int]:
        u = urlsplit(self.broker if "://" in self.broker else f"mqtt://{self.broker}")
        if u.scheme not in ("mqtt", "tcp"):
            raise UsageError(f"--broker {self.broker}: use mqtt://HOST:PORT")
        return u.hostname or "localhost", u.port or 1883


def _thresholds(base: DriftThresholds, values: Mapping[str, Any], where: str) -> DriftThresholds:
    known = {f.name for f in fields(DriftThresholds)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{where}: unknown drift setting(s): {', '.join(unknown)}")
    try:
        return replace(base, **values)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None


def _policy(base: ModelPolicy, values: Mapping[str, Any], where: str) -> ModelPolicy:
    known = {"drift", "latency_budget_ms", "on_alert"}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UsageError(f"{where}: unknown key(s): {', '.join(unknown)}")
    p = base
    if "drift" in values:
        p = replace(p, drift=_thresholds(p.drift, values["drift"], where))
    if "latency_budget_ms" in values:
        p = replace(p, latency_budget_ms=float(values["latency_budget_ms"]))
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


def load_service_config(path: Path | None, **overrides: Any) -> ServiceConfig:
    """The config file (optional) with command-line ``overrides`` (None values ignored)."""
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
        "default",
        "models",
        "bundles",
        "trusted_keys",
        "rollout",
    }
    for k in list(data):
        if k in simple:
            cfg = replace(cfg, **{k: data.pop(k)})
    default = cfg.default
    if "drift" in data:
        default = replace(default, drift=_thresholds(default.drift, data.pop("drift"), "[drift]"))
    if "latency_budget_ms" in data:
        default = replace(default, latency_budget_ms=float(data.pop("latency_budget_ms")))
    models = {
        name: _policy(default, values, f"[models.{name}]")
        for name, values in data.pop("models", {}).items()
    }
    if "rollout" in data:
        cfg = replace(cfg, rollout=RolloutPolicy.from_dict(data.pop("rollout")))
    if "bundles" in data:
        cfg = replace(cfg, bundles=tuple(Path(p) for p in data.pop("bundles")))
    if "trusted_keys" in data:
        cfg = replace(cfg, trusted_keys=tuple(Path(p) for p in data.pop("trusted_keys")))
    if data:
        raise UsageError(f"config: unknown key(s): {', '.join(sorted(data))}")
    cfg = replace(cfg, default=default, models=models)
    for k, v in overrides.items():
        if v is not None and v != ():
            cfg = replace(cfg, **{k: v})
    cfg.broker_host_port  # noqa: B018 - validates the URL
    return cfg
