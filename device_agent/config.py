"""The agent's typed configuration: a TOML file, then ``EDGEOPS_AGENT_<SECTION>_<KEY>`` overrides.

::

    [device]
    id = "pi-01"                    # default: the host name
    fleet = "default"
    labels = { site = "lab" }

    [model]
    store = "/var/lib/edgeops/models"
    bundle = "/opt/models/digits-1.0.0.bundle"   # installed at start when the store has none
    trusted_keys = ["/etc/edgeops/keys"]         # .pub files or directories of them
    allow_unsigned = false                       # development only
    threads = 1

    [telemetry]
    window_seconds = 10.0
    sample_rate = 1.0               # share of predictions whose inputs are summarised

    [mqtt]
    host = "localhost"
    port = 1883
    outbox = "/var/lib/edgeops/outbox.db"

    [http]
    port = 8470                     # on 127.0.0.1; or unix_socket = "/run/edgeops/agent.sock"

    [commands]
    trusted_keys = ["/etc/edgeops/command-keys"] # the service's command keys (.pub or dirs)
    allow_unsigned = false                       # development only: unsigned commands accepted
    max_clock_skew = 300.0          # seconds a command's issued time may be ahead of this clock

    [update]
    service_url = "https://fleet.example:8480"   # the service as this device reaches it
    allowed_hosts = []              # HOST, HOST:PORT or HOST:*; default: service_url's
    allowed_models = []             # model names an update may bring besides the current one's
    max_bytes = 524288000           # refuse bundles larger than this (500 MiB)
    timeout = 30.0                  # seconds per network operation of a download
    download_seconds = 600.0        # seconds a whole download may take, retries included
    health_predictions = 100        # health floors: a command may tighten them, never loosen
    health_seconds = 60.0
    max_error_rate = 0.05
    # max_p95_ms = 20.0, max_latency_ratio = 1.5: no floor unless set
    ca = "/etc/edgeops/ca.crt"      # CA of an https:// service (default: the system's CAs)

An environment variable such as ``EDGEOPS_AGENT_MQTT_HOST=broker.local`` overrides a key; values
are parsed as TOML values where they parse (numbers, booleans, arrays) and as strings otherwise.
"""

from __future__ import annotations

import math
import os
import socket
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgeops.core.errors import UsageError

ENV_PREFIX = "EDGEOPS_AGENT_"


@dataclass(frozen=True)
class DeviceConfig:
    id: str = field(default_factory=socket.gethostname)
    fleet: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelConfig:
    store: Path = Path("edgeops-agent/models")
    """Where installed bundles and the pointer to the current one live."""
    bundle: Path | None = None
    """A bundle to install at start when the store holds no model yet."""
    trusted_keys: tuple[Path, ...] = ()
    allow_unsigned: bool = False
    """Accept unsigned bundles: development only."""
    threads: int = 1
    """Inference threads."""
    feedback_tolerance: float = 0.1
    """Regression feedback counts as correct within this relative error."""


@dataclass(frozen=True)
class TelemetryConfig:
    window_seconds: float = 10.0
    sample_rate: float = 1.0
    """Share of predictions whose inputs are summarised (latency and outputs: all of them)."""


@dataclass(frozen=True)
class TlsConfig:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    insecure: bool = False
    """Skip the broker host name check (test brokers only)."""


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = True
    host: str = "localhost"
    port: int = 1883
    keepalive: int = 30
    session_expiry: int = 2 * 24 * 3600
    """Seconds the broker keeps the session (and queued commands) while the agent is away."""
    username: str | None = None
    password: str | None = None
    tls: TlsConfig | None = None
    outbox: Path = Path("edgeops-agent/outbox.db")
    outbox_max_messages: int = 10_000
    outbox_max_bytes: int = 50 * 2**20
    max_in_flight: int = 50
    """Outbox messages handed to the MQTT client before their acknowledgement."""


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8470
    unix_socket: Path | None = None
    """Serve on this Unix socket instead of host and port."""


@dataclass(frozen=True)
class CommandsConfig:
    """Which commands the agent acts on (:mod:`edgeops.core.commands`,
    :mod:`device_agent.guard`)."""

    trusted_keys: tuple[Path, ...] = ()
    """The service's command public keys (``.pub`` files or directories of them). Several may
    be trusted at once: a new key is added before the old one is retired. Not the bundle keys."""
    allow_unsigned: bool = False
    """Development mode: act on unsigned commands too (signed ones are still checked). Logged
    loudly at start and reported in the ``started`` event."""
    max_clock_skew: float = 300.0
    """Seconds a command's issued time may be ahead of this device's clock."""


@dataclass(frozen=True)
class UpdateConfig:
    """Over-the-air updates (:mod:`device_agent.updater`) and the device's update policy
    (:mod:`device_agent.policy`): what a command may and may not ask of this device."""

    service_url: str | None = None
    """The service's public URL as this device reaches it: by default bundles are downloaded
    only from its host and port."""
    allowed_hosts: tuple[str, ...] = ()
    """Hosts bundles may be downloaded from (``HOST`` on the scheme's default port,
    ``HOST:PORT``, ``HOST:*``); replaces the default of ``service_url``'s host and port. The
    agent's own local API is refused whatever this says."""
    allowed_models: tuple[str, ...] = ()
    """Model names an update may bring besides the current model's (with no model installed:
    these only, or any when empty)."""
    max_bytes: int = 500 * 2**20
    """The largest bundle a download may bring."""
    timeout: float = 30.0
    """Seconds one network operation of a download may take (connect, or one read)."""
    download_seconds: float = 600.0
    """Seconds a whole download may take, every attempt and pause included (a server that
    trickles bytes is given up on within ``timeout`` of it); then the update fails."""
    attempts: int = 5
    """Download attempts; each one resumes (HTTP Range) where the previous stopped, after a
    pause of 1, 2, 4, 8 … seconds (at most 8)."""
    health_predictions: int = 100
    """The health window waits for at least this many predictions by the new model (unless
    its length in seconds ends it first); a command may ask for more."""
    health_seconds: float = 60.0
    """The health window's length in seconds, at least; a command may ask for more."""
    max_error_rate: float | None = 0.05
    """The highest inference error rate in the health window; a command may ask for less."""
    max_p95_ms: float | None = None
    """The highest p95 latency (ms) in the health window; None: none unless a command asks."""
    max_latency_ratio: float | None = None
    """The highest p95 of the new model over the previous model's; None: none unless a
    command asks."""
    bench_runs: int = 30
    """Single-sample runs of the old and the new model on the bundle's samples, for the latency
    comparison when traffic is too thin."""
    ca: Path | None = None
    """CA certificate(s) that an ``https://`` download's server certificate is checked against
    (the service's ``--http-cert`` issuer); default: the system's CAs."""


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    json: bool = False


@dataclass(frozen=True)
class AgentConfig:
    device: DeviceConfig = field(default_factory=DeviceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def checked(self) -> AgentConfig:
        from edgeops.core import topics

        try:
            topics.check_id(self.device.id)
            topics.check_id(self.device.fleet)
        except ValueError as e:
            raise UsageError(f"config: {e}") from None
        t = self.telemetry
        if not 0.05 <= t.window_seconds <= 86400:
            raise UsageError("config: telemetry.window_seconds must be between 0.05 and 86400")
        if not 0 <= t.sample_rate <= 1:
            raise UsageError("config: telemetry.sample_rate must be between 0 and 1")
        if self.model.threads < 1:
            raise UsageError("config: model.threads must be at least 1")
        if not 0 < self.mqtt.port < 65536 or not 0 <= self.http.port < 65536:
            raise UsageError("config: ports must be between 1 and 65535")
        u = self.update
        if u.max_bytes < 1 or u.attempts < 1 or u.health_predictions < 1 or u.bench_runs < 1:
            raise UsageError(
                "config: update.max_bytes, attempts, health_predictions and bench_runs "
                "must be at least 1"
            )
        if not (u.timeout > 0 and u.health_seconds > 0 and u.download_seconds > 0):
            raise UsageError(
                "config: update.timeout, download_seconds and health_seconds must be positive"
            )
        if u.max_error_rate is not None and not 0 <= u.max_error_rate <= 1:
            raise UsageError("config: update.max_error_rate must be between 0 and 1")
        for name in ("max_p95_ms", "max_latency_ratio"):
            v = getattr(u, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise UsageError(f"config: update.{name} must be a positive number")
        if u.service_url is not None:
            url = urllib.parse.urlsplit(u.service_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise UsageError(
                    f"config: update.service_url {u.service_url!r} must be an http(s) URL"
                )
        from device_agent.policy import parse_host

        for entry in u.allowed_hosts:
            try:
                parse_host(entry)
            except ValueError as e:
                raise UsageError(f"config: update.allowed_hosts: {e}") from None
        if not self.commands.max_clock_skew > 0:
            raise UsageError("config: commands.max_clock_skew must be positive")
        if self.log.level.lower() not in ("debug", "info", "warning", "error"):
            raise UsageError("config: log.level must be debug, info, warning or error")
        return self


_SECTIONS: dict[str, type] = {
    "device": DeviceConfig,
    "model": ModelConfig,
    "telemetry": TelemetryConfig,
    "mqtt": MqttConfig,
    "http": HttpConfig,
    "commands": CommandsConfig,
    "update": UpdateConfig,
    "log": LogConfig,
}


def _coerce(section: str, name: str, value: Any, kind: Any, base: Path | None) -> Any:
    where = f"{section}.{name}"
    text = str(kind)
    if section == "mqtt" and name == "tls":
        if not isinstance(value, Mapping):
            raise UsageError(f"config: {where} must be a table")
        return _build(TlsConfig, "mqtt.tls", value, base)
    if "Path" in text and "tuple" in text:
        items = value if isinstance(value, list) else [value]
        return tuple(_path(v, base) for v in items)
    if "Path" in text:
        return None if value in (None, "") else _path(value, base)
    if "tuple" in text:
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise UsageError(f"config: {where} must be a list of strings")
        return tuple(items)
    if "Mapping" in text:
        if not isinstance(value, Mapping):
            raise UsageError(f"config: {where} must be a table")
        return {str(k): str(v) for k, v in value.items()}
    if "bool" in text:
        if not isinstance(value, bool):
            raise UsageError(f"config: {where} must be true or false, got {value!r}")
        return value
    if "int" in text and "float" not in text:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"config: {where} must be an integer, got {value!r}")
        return value
    if "float" in text:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"config: {where} must be a number, got {value!r}")
        return float(value)
    if value is None and "None" in text:
        return None
    if not isinstance(value, str):
        raise UsageError(f"config: {where} must be a string, got {value!r}")
    return value


def _path(value: Any, base: Path | None) -> Path:
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() or base is None else base / p


def _build(cls: type, section: str, values: Mapping[str, Any], base: Path | None) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"config: unknown key(s) in [{section}]: {', '.join(unknown)}")
    kwargs = {k: _coerce(section, k, v, known[k].type, base) for k, v in values.items()}
    return cls(**kwargs)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            raise UsageError(f"environment: {key} names no config section")
        name = rest[len(section) + 1 :]
        kinds = {f.name: str(f.type) for f in fields(_SECTIONS[section])}
        value: Any = raw
        if not kinds.get(name, "").startswith("str"):  # strings stay as given: a password "1234"
            try:
                value = tomllib.loads(f"v = {raw}")["v"]
            except tomllib.TOMLDecodeError:
                value = raw
        out.setdefault(section, {})[name] = value
    return out


def load_config(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> AgentConfig:
    """Read ``path`` (TOML; optional), apply environment overrides, check the result.

    Relative paths in the file are taken relative to the file's directory.
    """
    data: dict[str, Any] = {}
    base: Path | None = None
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise UsageError(f"{p}: no such config file") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"{p}: cannot read config ({e})") from None
        except tomllib.TOMLDecodeError as e:
            raise UsageError(f"{p}: not valid TOML ({e})") from None
        base = p.resolve().parent
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise UsageError(f"config: unknown section(s): {', '.join(unknown)}")
    for section, values in _env_overrides(os.environ if env is None else env).items():
        data.setdefault(section, {}).update(values)
    cfg = AgentConfig()
    for section, cls in _SECTIONS.items():
        table = data.get(section)
        if table is None:
            continue
        if not isinstance(table, Mapping):
            raise UsageError(f"config: [{section}] must be a table")
        cfg = replace(cfg, **{section: _build(cls, section, table, base)})
    return cfg.checked()
