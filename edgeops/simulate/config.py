"""The settings of a simulated fleet: :class:`FleetConfig`, checked before anything starts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgeops.core import topics
from edgeops.core.broker import BrokerSettings
from edgeops.core.errors import UsageError
from edgeops.simulate.spec import DriftSpec


@dataclass(frozen=True)
class FleetConfig:
    """What :class:`Fleet` simulates; see ``edgeops simulate --help`` for the options."""

    devices: int
    bundle: Path
    """The bundle every device starts with (installed into each device's own store)."""
    broker: BrokerSettings | str = "mqtt://localhost:1883"
    """The broker's URL, or its settings (TLS, CA); each device uses its own account."""
    device_credentials: Path | None = None
    """Each device's broker identity: ``DIR/ID.crt`` and ``DIR/ID.key`` (a client certificate
    whose common name is the device id), else its password in ``DIR/passwords`` (lines
    ``ID:PASSWORD``); the user name is the device id. None: no account (an open broker)."""
    fleet: str = "sim"
    data: Path | None = None
    """CSV or NPZ rows to replay; None: the sample dataset the bundle records it was trained on
    (refused for a bundle trained on other data)."""
    target: str | None = None
    """The label column; default: the bundle's training target, else label, target or y."""
    rate: float = 1.0
    """Predictions per second per device."""
    feedback: float = 0.0
    """Share of predictions whose true label is sent back."""
    window_seconds: float = 10.0
    drift: tuple[DriftSpec, ...] = ()
    """Drift switched on at start, or ``after`` seconds later."""
    trusted_keys: tuple[Path, ...] = ()
    allow_unsigned: bool = False
    command_keys: tuple[Path, ...] = ()
    """The service's command public keys the devices trust (``[commands] trusted_keys``);
    none: every command is refused, unless ``allow_unsigned_commands``."""
    allow_unsigned_commands: bool = False
    """Devices in development mode: they act on unsigned commands too."""
    service_url: str | None = None
    """The service's public URL: devices download bundles only from its host and port."""
    health_predictions: int = 100
    """The devices' health floors (``[update]``): an update's health window waits for at
    least this many predictions..."""
    health_seconds: float = 60.0
    """...and lasts at least this many seconds when traffic is thin; a command may ask more."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Device labels every simulated device reports in its status."""
    workdir: Path | None = None
    """Where device stores and outboxes live; a temporary directory (removed at stop) if None.
    A kept workdir is a fleet of rebooted devices: they keep the model they had."""
    prefix: str = "sim"
    """Device ids are ``{prefix}-000``, ``{prefix}-001``, …"""
    seed: int = 0
    feeders: int | None = None
    """Threads calling the agents; default one per 50 devices, at most 4."""
    start_workers: int = 16
    """Agents started (and stopped) at the same time."""

    def checked(self) -> FleetConfig:
        if self.devices < 1:
            raise UsageError("--devices must be at least 1")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise UsageError("--rate must be a positive number of predictions per second")
        if not 0 <= self.feedback <= 1:
            raise UsageError("--feedback must be a fraction between 0 and 1")
        if not 0.05 <= self.window_seconds <= 86400:
            raise UsageError("--window-seconds must be between 0.05 and 86400")
        if not self.trusted_keys and not self.allow_unsigned:
            raise UsageError("give --trusted-key PUB (repeatable), or --allow-unsigned")
        if self.service_url is not None:
            url = urlsplit(self.service_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise UsageError(
                    f"--service-url {self.service_url!r}: use http(s)://HOST[:PORT], the service "
                    "as the devices reach it"
                )
        if self.health_predictions < 1 or not self.health_seconds > 0:
            raise UsageError("health_predictions and health_seconds must be positive")
        if self.feeders is not None and self.feeders < 1:
            raise UsageError("feeders must be at least 1")
        if self.start_workers < 1:
            raise UsageError("start_workers must be at least 1")
        try:
            topics.check_id(self.fleet, "--fleet")
            topics.check_id(self.device_ids()[-1], "a device id")
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.broker_address()
        if self.device_credentials is not None:
            if not self.device_credentials.is_dir():
                raise UsageError(f"--device-credentials {self.device_credentials}: not a directory")
            for device in self.device_ids():
                self.device_account(device)
        for spec in self.drift:
            try:
                spec.device_indices(self.devices)
            except UsageError as e:
                raise UsageError(f"--drift {spec}: {e}") from None
        return self

    @property
    def mqtt(self) -> BrokerSettings:
        b = self.broker
        return b if isinstance(b, BrokerSettings) else BrokerSettings(b)

    def broker_address(self) -> tuple[str, int]:
        """Host and port of the broker."""
        return self.mqtt.address

    def device_account(
        self, device: str
    ) -> tuple[str | None, str | None, Path | None, Path | None]:
        """A device's user name, password, certificate and key (see ``device_credentials``)."""
        d = self.device_credentials
        if d is None:
            return None, None, None, None
        cert, key = d / f"{device}.crt", d / f"{device}.key"
        if cert.is_file() and key.is_file():
            return None, None, cert, key
        passwords = self._passwords()
        if device not in passwords:
            raise UsageError(
                f"--device-credentials {d}: no {device}.crt and .key, and no password for "
                f"{device} in {d / 'passwords'}"
            )
        return device, passwords[device], None, None

    def _passwords(self) -> dict[str, str]:
        assert self.device_credentials is not None
        path = self.device_credentials / "passwords"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise UsageError(f"{path}: {e.strerror or e}") from None
        out = {}
        for line in lines:
            if line.strip():
                user, sep, password = line.partition(":")
                if not sep:
                    raise UsageError(f"{path}: expected ID:PASSWORD lines")
                out[user.strip()] = password.rstrip("\n")
        return out

    def device_ids(self) -> list[str]:
        width = max(3, len(str(self.devices - 1)))
        return [f"{self.prefix}-{i:0{width}d}" for i in range(self.devices)]
