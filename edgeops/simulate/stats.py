"""What a simulated fleet did: per-device and fleet-wide counts, a progress line, a table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgeops.core.terminal import render


@dataclass(frozen=True)
class DeviceStats:
    """One simulated device, as the simulator sees it."""

    device: str
    online: bool
    """Its MQTT link is connected."""
    predictions: int
    """Predictions that succeeded."""
    errors: int
    """Predictions the agent refused or failed."""
    feedback: int
    """Labels sent back and accepted."""
    model: str | None
    """``name version`` of the model it serves."""
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    drift: tuple[str, ...]
    """The drifts on it now, as spec text."""
    outbox_pending: int
    last_error: str | None


@dataclass(frozen=True)
class FleetStats:
    """The whole fleet: totals over :class:`DeviceStats`."""

    devices: int
    online: int
    predictions: int
    errors: int
    feedback: int
    drifting: int
    """Devices with at least one drift on."""
    skipped: int
    """Predictions the feeders skipped because the host fell behind the requested rate."""
    latency_p95_ms: float | None
    """Over every device's predictions (merged histograms)."""
    elapsed: float
    models: Mapping[str, int]
    """Devices per served model (``name version``)."""

    def line(self) -> str:
        """One progress line."""
        rate = self.predictions / self.elapsed if self.elapsed > 0 else 0.0
        models = ", ".join(f"{m} x{n}" for m, n in sorted(self.models.items())) or "no model"
        text = (
            f"{self.elapsed:6.1f} s  online {self.online}/{self.devices}  "
            f"predictions {self.predictions:,} ({rate:,.0f}/s)  errors {self.errors:,}  "
            f"feedback {self.feedback:,}  drift on {self.drifting} device(s)  {models}"
        )
        return text + (f"  skipped {self.skipped:,} (host too slow)" if self.skipped else "")


def summary_table(devices: Sequence[DeviceStats], fleet: FleetStats | None = None) -> str:
    """A per-device table, with a total row when ``fleet`` is given."""
    headers = ["device", "online", "model", "predictions", "errors", "feedback"]
    headers += ["p50 ms", "p95 ms", "drift"]
    rows: list[list[object]] = [
        [
            d.device,
            d.online,
            d.model,
            d.predictions,
            d.errors,
            d.feedback,
            d.latency_p50_ms,
            d.latency_p95_ms,
            "; ".join(d.drift) or "-",
        ]
        for d in devices
    ]
    if fleet is not None:
        rows.append(
            [
                "total",
                f"{fleet.online}/{fleet.devices}",
                None,
                fleet.predictions,
                fleet.errors,
                fleet.feedback,
                None,
                fleet.latency_p95_ms,
                f"{fleet.drifting} device(s)",
            ]
        )
    return render(headers, rows)
