"""What the dashboard (:mod:`edgeops.service.views`) and ``/metrics`` read beyond the plain
reads of the other parts: a device over a time span, who runs a model, the fleet's counts.

Reads stay bounded however long the service has run: a device's windows and drift rows are read
for the view's span only, through the ``(fleet, device, time)`` indexes; drift rows are thinned in
SQL to the newest evaluation per time bucket (found from the index alone) before they are read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgeops.core import wire
from edgeops.service.storage.schema import (
    alerts,
    deployment_devices,
    deployments,
    devices,
    drift,
    windows,
)
from edgeops.service.storage.telemetry import decode_stored


@dataclass(frozen=True)
class DeviceHistory:
    """A device's rows over a time span, read in one transaction."""

    windows: Sequence[Any]
    """``(received, count, errors, bad_inputs, latency, id, model_name, model_version)``,
    oldest first."""
    drift: Sequence[Any]
    """The device scope's rows of the newest evaluation per time bucket: ``(evaluated,
    model_version, feature, kind, reference, samples, value, drifted, checks)``, oldest first."""
    alerts: list[dict[str, Any]]
    """Alerts active in the span or raised or cleared in it, oldest first."""
    deployments: list[dict[str, Any]]
    """The device's last 20 deployments, newest first."""


@dataclass(frozen=True)
class FleetCounts:
    """What ``/metrics`` counts, read in one transaction."""

    alerts: list[tuple[str, str, int]]
    """Active alerts per ``(fleet, kind)``."""
    deployments: dict[str, int]
    """Deployments per state."""
    devices: list[tuple[str, bool, int]]
    """Devices per ``(fleet, online)``."""


class DashboardReads:
    """Reads for the dashboard's views and the Prometheus gauges."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def device_history(
        self, fleet: str, device: str, *, since: float, bucket: float
    ) -> DeviceHistory:
        """``device`` of ``fleet`` from ``since``, drift rows thinned to time buckets of
        ``bucket`` seconds."""
        w, dr, a = windows.c, drift.c, alerts.c
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(
                    w.received,
                    w["count"],
                    w.errors,
                    w.bad_inputs,
                    w.latency,
                    w.id,
                    w.model_name,
                    w.model_version,
                )
                .where(w.fleet == fleet, w.device == device, w.received >= since)
                .order_by(w.received)
            ).all()
            # The newest evaluation in each time bucket, from the (fleet, device, evaluated)
            # index alone (an evaluation stores all its rows at one time), then only its rows
            # are read.
            mine = (dr.fleet == fleet, dr.device == device)
            times = conn.execute(
                sa.select(sa.func.max(dr.evaluated))
                .where(*mine, dr.evaluated >= since)
                .group_by(sa.cast(dr.evaluated / bucket, sa.Integer))
            ).scalars()
            drift_rows = conn.execute(
                sa.select(
                    dr.evaluated,
                    dr.model_version,
                    dr.feature,
                    dr.kind,
                    dr.reference,
                    dr.samples,
                    dr.value,
                    dr.drifted,
                    dr.checks,
                )
                .where(*mine, dr.scope == "device", dr.evaluated.in_(list(times)))
                .order_by(dr.evaluated, dr.id)
            ).all()
            found = conn.execute(
                sa.select(alerts)
                .where(
                    a.fleet == fleet,
                    a.device == device,
                    sa.or_(a.cleared.is_(None), a.cleared >= since, a.raised >= since),
                )
                .order_by(a.raised)
            ).mappings()
            alert_rows = [dict(x) for x in found]
            dd, dep = deployment_devices.c, deployments.c
            deps = conn.execute(
                sa.select(
                    dep.id,
                    dep.model_name,
                    dep.model_version,
                    dd.from_version,
                    dd.state,
                    dep.state.label("deployment_state"),
                    dep.created,
                    dd.decided,
                    dd.reason,
                )
                .select_from(deployment_devices.join(deployments, dd.deployment == dep.id))
                .where(dep.fleet == fleet, dd.device == device)
                .order_by(dep.created.desc())
                .limit(20)
            ).mappings()
            deployment_rows = [dict(x) for x in deps]
        return DeviceHistory(rows, drift_rows, alert_rows, deployment_rows)

    def window_latencies(self, ids: Sequence[int]) -> dict[int, wire.LatencyHistogram]:
        """The latency histograms of windows ``ids`` from their payloads (windows stored before
        the ``latency`` column); windows that no longer decode are left out (and logged)."""
        out: dict[int, wire.LatencyHistogram] = {}
        w = windows.c
        with self.engine.begin() as conn:
            for i in range(0, len(ids), 500):
                q = sa.select(w.id, w.payload).where(w.id.in_(list(ids[i : i + 500])))
                for wid, payload in conn.execute(q):
                    tele = decode_stored(payload, wid)
                    if tele is not None:
                        out[wid] = tele.latency
        return out

    def running_on(self, name: str, *, per_version: int) -> dict[str, list[str]]:
        """``fleet/device`` of the devices running each version of model ``name`` (the first
        ``per_version`` by fleet and device)."""
        d = devices.c
        running: dict[str, list[str]] = defaultdict(list)
        q = (
            sa.select(d.model_version, d.fleet, d.device)
            .where(d.model_name == name)
            .order_by(d.fleet, d.device)
        )
        with self.engine.begin() as conn:
            for version, fleet, device in conn.execute(q):
                if len(running[version]) < per_version:
                    running[version].append(f"{fleet}/{device}")
        return dict(running)

    def counts(self) -> FleetCounts:
        """Active alerts per fleet and kind, deployments per state, devices per fleet and
        presence."""
        a, d, dev = alerts.c, deployments.c, devices.c
        with self.engine.begin() as conn:
            alert_counts = conn.execute(
                sa.select(a.fleet, a.kind, sa.func.count())
                .where(a.cleared.is_(None))
                .group_by(a.fleet, a.kind)
            ).all()
            states: dict[str, int] = {
                state: int(n)
                for state, n in conn.execute(sa.select(d.state, sa.func.count()).group_by(d.state))
            }
            device_counts = conn.execute(
                sa.select(dev.fleet, dev.online, sa.func.count()).group_by(dev.fleet, dev.online)
            ).all()
        return FleetCounts(
            [(f, k, int(n)) for f, k, n in alert_counts],
            states,
            [(f, bool(o), int(n)) for f, o, n in device_counts],
        )
