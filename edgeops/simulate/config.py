"""The settings of a simulated fleet: :class:`FleetConfig`, checked before anything starts."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from edgeops import topics
from edgeops.errors import UsageError
from edgeops.simulate.spec import DriftSpec


@dataclass(frozen=True)
class FleetConfig:
    """What :class:`Fleet` simulates; see ``edgeops simulate --help`` for the options."""

    devices: int
    bundle: Path
    """The bundle every device starts with (installed into each device's own store)."""
    broker: str = "mqtt://localhost:1883"
    fleet: str = "sim"
    data: Path | None = None
    """CSV or NPZ rows to replay; default: the bundled sample dataset the bundle came from."""
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
        for spec in self.drift:
            try:
                spec.device_indices(self.devices)
            except UsageError as e:
                raise UsageError(f"--drift {spec}: {e}") from None
        return self

    def broker_address(self) -> tuple[str, int]:
        """Host and port of ``broker`` (``mqtt://HOST:PORT``, or ``HOST:PORT``)."""
        u = urlsplit(self.broker if "://" in self.broker else f"mqtt://{self.broker}")
        try:
            port = u.port or 1883
        except ValueError:
            port = 0
        if u.scheme not in ("mqtt", "tcp") or u.path not in ("", "/") or not u.hostname or not port:
            raise UsageError(f"--broker {self.broker}: use mqtt://HOST:PORT")
        return u.hostname, port

    def device_ids(self) -> list[str]:
        width = max(3, len(str(self.devices - 1)))
        return [f"{self.prefix}-{i:0{width}d}" for i in range(self.devices)]
