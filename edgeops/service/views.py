"""What the dashboard's data endpoints read: the fleet overview, a device over time, a model's
versions (:mod:`edgeops.service.view_types`).

Reads stay bounded however long the service has run: a device's windows and drift rows are read
for the view's span only, through the ``(fleet, device, time)`` indexes; latency comes from the
windows' own ``latency`` column (a few hundred bytes) rather than whole payloads; drift rows are
thinned in SQL to the newest per feature and time bucket before they are decoded.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa

from edgeops.core import wire
from edgeops.core.latency import merge_wire
from edgeops.service import api_types as t
from edgeops.service import db
from edgeops.service import view_types as v

if TYPE_CHECKING:
    from edgeops.service.server import Service

MAX_POINTS = 120
"""Time buckets per chart."""
MAX_HOURS = 24.0 * 7
RUNNING_ON = 200
"""Devices listed per model version."""

_latency = msgspec.json.Decoder(wire.LatencyHistogram)


def overview(service: Service, fleet: str | None = None) -> v.Overview:
    store = service.store
    devices = store.devices(fleet)
    active = store.active_alerts(fleet)
    per: dict[tuple[str, str], int] = defaultdict(int)
    for a in active:
        per[(a["fleet"], a["device"])] += 1
    versions: dict[tuple[str, str | None, str | None], list[int]] = {}
    for d in devices:
        d["active_alerts"] = per.get((d["fleet"], d["device"]), 0)
        n = versions.setdefault((d["fleet"], d["model_name"], d["model_version"]), [0, 0])
        n[0] += 1
        n[1] += bool(d["online"])
    running = [
        r for r in service.rollouts.deployments(active=True) if fleet is None or r["fleet"] == fleet
    ]
    online = sum(bool(d["online"]) for d in devices)
    return v.Overview(
        now=time.time(),
        online=online,
        offline=len(devices) - online,
        devices=t.typed(devices, list[t.FleetDevice]),
        versions=[
            v.VersionCount(fleet=f, model_name=m, model_version=ver, devices=n, online=on)
            for (f, m, ver), (n, on) in sorted(versions.items(), key=lambda kv: _key(kv[0]))
        ],
        alerts=t.typed(sorted(active, key=lambda a: -a["raised"]), list[t.Alert]),
        deployments=t.typed(running, list[t.DeploymentRow]),
    )


def _key(k: tuple[str, str | None, str | None]) -> tuple[str, str, str]:
    return k[0], k[1] or "", k[2] or ""


def device_view(
    service: Service, fleet: str, device: str, hours: float, now: float | None = None
) -> v.DeviceView:
    """``device`` of ``fleet`` over the last ``hours`` (KeyError: no such device)."""
    store = service.store
    record = store.device(fleet, device)
    if record is None:
        raise KeyError(device)
    now = time.time() if now is None else now
    hours = min(max(hours, 1 / 60), MAX_HOURS)
    since = now - hours * 3600.0
    bucket = hours * 3600.0 / MAX_POINTS
    w, dr, a = db.windows.c, db.drift.c, db.alerts.c
    with store.begin() as conn:
        rows = conn.execute(
            sa.select(w.received, w["count"], w.errors, w.bad_inputs, w.latency, w.id)
            .where(w.fleet == fleet, w.device == device, w.received >= since)
            .order_by(w.received)
        ).all()
        spans = conn.execute(
            sa.select(
                w.model_name,
                w.model_version,
                sa.func.min(w.received),
                sa.func.max(w.received),
                sa.func.count(),
            )
            .where(w.fleet == fleet, w.device == device, w.received >= since)
            .group_by(w.model_name, w.model_version)
            .order_by(sa.func.min(w.received))
        ).all()
        slot = sa.cast(dr.evaluated / bucket, sa.Integer)
        newest = (
            sa.select(sa.func.max(dr.id))
            .where(
                dr.fleet == fleet,
                dr.device == device,
                dr.scope == "device",
                dr.evaluated >= since,
            )
            .group_by(dr.model_version, dr.feature, dr.kind, dr.reference, slot)
        )
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
            .where(dr.id.in_(newest))
            .order_by(dr.evaluated, dr.id)
        ).all()
        alerts = conn.execute(
            sa.select(db.alerts)
            .where(
                a.fleet == fleet,
                a.device == device,
                sa.or_(a.cleared.is_(None), a.cleared >= since, a.raised >= since),
            )
            .order_by(a.raised)
        ).mappings()
        alert_rows = [dict(x) for x in alerts]
        dd, dep = db.deployment_devices.c, db.deployments.c
        deployments = conn.execute(
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
            .select_from(db.deployment_devices.join(db.deployments, dd.deployment == dep.id))
            .where(dep.fleet == fleet, dd.device == device)
            .order_by(dep.created.desc())
            .limit(20)
        ).mappings()
        deployment_rows = [dict(x) for x in deployments]
    return v.DeviceView(
        now=now,
        since=since,
        bucket_s=bucket,
        device=t.typed(record, t.Device),
        activity=activity(store, rows, since, bucket),
        drift=drift_series(drift_rows),
        alerts=t.typed(alert_rows, list[t.Alert]),
        events=t.typed(store.events_of(fleet, device, limit=30), list[t.Event]),
        models=[
            v.ModelSpan(model_name=m, model_version=ver, first=first, last=last, windows=int(n))
            for m, ver, first, last, n in spans
        ],
        deployments=t.typed(deployment_rows, list[v.DeviceDeployment]),
    )


def activity(store: db.Store, rows: Sequence[Any], since: float, bucket: float) -> v.Activity:
    """Windows ``(received, count, errors, bad_inputs, latency, id)`` in time buckets."""
    slots: dict[int, list[Any]] = defaultdict(list)
    for r in rows:
        slots[min(int((r[0] - since) // bucket), MAX_POINTS - 1)].append(r)
    old = [r[5] for r in rows if r[4] is None]  # stored before the latency column
    from_payload = _payload_latencies(store, old) if old else {}
    out = v.Activity([], [], [], [], [], [])
    for i in range(MAX_POINTS):
        got = slots.get(i, [])
        out.t.append(since + (i + 1) * bucket)
        out.predictions_per_s.append(sum(r[1] for r in got) / bucket)
        out.errors.append(sum(r[2] for r in got))
        out.bad_inputs.append(sum(r[3] for r in got))
        hists = []
        for r in got:
            h = _latency.decode(r[4]) if r[4] is not None else from_payload.get(r[5])
            if h is not None and h.count:
                hists.append(h)
        merged = merge_wire(hists) if hists else None
        out.p50_ms.append(None if merged is None else merged.quantile(0.5))
        out.p95_ms.append(None if merged is None else merged.quantile(0.95))
    return out


def _payload_latencies(store: db.Store, ids: Sequence[int]) -> dict[int, wire.LatencyHistogram]:
    out: dict[int, wire.LatencyHistogram] = {}
    w = db.windows.c
    with store.begin() as conn:
        for i in range(0, len(ids), 500):
            q = sa.select(w.id, w.payload).where(w.id.in_(list(ids[i : i + 500])))
            for wid, payload in conn.execute(q):
                tele = db.decode_stored(payload, wid)
                if tele is not None:
                    out[wid] = tele.latency
    return out


def drift_series(rows: Sequence[Any]) -> list[v.DriftSeries]:
    """Rows ``(evaluated, version, feature, kind, reference, samples, value, drifted, checks)``,
    oldest first, as one series per (version, feature, kind, reference) with each deciding
    check's value, threshold and floor."""
    series: dict[tuple[str, str, str, str], v.DriftSeries] = {}
    tests: dict[tuple[str, str, str, str], dict[str, v.TestSeries]] = {}
    for evaluated, version, feature, kind, reference, samples, value, drifted, checks in rows:
        key = (version, feature, kind, reference)
        s = series.get(key)
        if s is None:
            s = series[key] = v.DriftSeries(feature, kind, reference, version, [], [], [], [])
            tests[key] = {}
        n = len(s.t)
        s.t.append(evaluated)
        s.drifted.append(drifted)
        s.samples.append(samples)
        found: dict[str, tuple[float | None, float | None, float | None]] = {}
        for c in checks or ():
            if isinstance(c, dict) and c.get("decides") and isinstance(c.get("test"), str):
                found[c["test"]] = (
                    _num(c.get("value")),
                    _num(c.get("threshold")),
                    _num(c.get("floor")),
                )
        if not checks and value is not None:  # concept drift, latency: one value, no checks
            found["value"] = (_num(value), None, None)
        for name, (val, thr, flo) in found.items():
            ts = tests[key].get(name)
            if ts is None:
                ts = tests[key][name] = v.TestSeries(name, [None] * n, [None] * n, [None] * n)
                s.tests.append(ts)
            ts.value.append(val)
            ts.threshold.append(thr)
            ts.floor.append(flo)
        for name, ts in tests[key].items():
            if name not in found:
                ts.value.append(None)
                ts.threshold.append(None)
                ts.floor.append(None)
    return sorted(series.values(), key=lambda s: (s.model_version, s.reference, s.kind, s.feature))


def _num(x: Any) -> float | None:
    """A finite float, else None (JSON has no infinities; a chart has no use for them)."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def model_view(service: Service, name: str) -> v.ModelView:
    """KeyError when no version of ``name`` is registered."""
    store = service.store
    rows = [r for r in store.models() if r["name"] == name]
    if not rows:
        raise KeyError(name)
    d = db.devices.c
    with store.begin() as conn:
        running: dict[str, list[str]] = defaultdict(list)
        q = (
            sa.select(d.model_version, d.fleet, d.device)
            .where(d.model_name == name)
            .order_by(d.fleet, d.device)
        )
        for version, fleet, device in conn.execute(q):
            if len(running[version]) < RUNNING_ON:
                running[version].append(f"{fleet}/{device}")
    versions = []
    for r in rows:
        manifest = store.model(name, r["version"]) or {}
        fid = manifest.get("fidelity")
        conv = manifest.get("conversion")
        versions.append(
            v.ModelVersion(
                version=r["version"],
                registered=r["registered"],
                model_sha256=r["model_sha256"],
                bundle_sha256=r["bundle_sha256"],
                bundle_size=r["bundle_size"],
                lineage=t.typed(r["lineage"], t.Lineage),
                fidelity=t.typed(fid, v.Fidelity) if isinstance(fid, dict) else None,
                conversion=t.typed(conv, v.Conversion) if isinstance(conv, dict) else None,
                devices=r["devices"],
                running_on=running.get(r["version"], []),
            )
        )
    return v.ModelView(name=name, versions=versions)
