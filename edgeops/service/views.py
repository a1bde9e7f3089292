"""What the dashboard's data endpoints show: the fleet overview, a device over time, a model's
versions (:mod:`edgeops.service.view_types`), from the reads of
:mod:`edgeops.service.storage.dashboard`.

Reads stay bounded however long the service has run: a device's windows and drift rows are read
for the view's span only (drift rows thinned to the newest evaluation per time bucket); latency
comes from the windows' own ``latency`` column (a few hundred bytes) rather than whole payloads.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec
import numpy as np

from edgeops.core import wire
from edgeops.core.latency import LogHistogram
from edgeops.service import api_types as t
from edgeops.service import view_types as v
from edgeops.service.storage import Store

if TYPE_CHECKING:
    from edgeops.service.server import Service

MAX_POINTS = 120
"""Time buckets per chart."""
MAX_HOURS = 24.0 * 7
RUNNING_ON = 200
"""Devices listed per model version."""


class _Latency(msgspec.Struct):
    """A stored window's latency histogram, read without the wire's checks: the intake checked
    it (as a ``wire.LatencyHistogram``) before it was stored; the merged one is checked again."""

    relative_accuracy: float
    buckets: dict[int, int]
    zero: int = 0
    count: int = 0
    sum: float = 0.0
    min: float | None = None
    max: float | None = None
    min_value: float = 1e-6


_latency = msgspec.json.Decoder(_Latency)


def merged_latencies(slotted: Sequence[tuple[int, _Latency]]) -> dict[int, LogHistogram]:
    """Per slot, one histogram of its latencies by adding their counts (what
    :func:`edgeops.core.latency.merge_wire` does, for every slot at once with numpy: a day of
    windows merges in milliseconds). In a slot, histograms of another accuracy than the one
    holding most values are left out, as merge_wire does."""
    groups: dict[tuple[int, float, float], list[_Latency]] = defaultdict(list)
    for slot, h in slotted:
        if h.count:
            groups[(slot, h.relative_accuracy, h.min_value)].append(h)
    best: dict[int, tuple[float, float, list[_Latency]]] = {}
    for (slot, accuracy, min_value), hs in groups.items():
        n = sum(h.count for h in hs)
        if slot not in best or n > sum(h.count for h in best[slot][2]):
            best[slot] = (accuracy, min_value, hs)
    if not best:
        return {}
    slots: list[int] = []
    keys: list[int] = []
    counts: list[int] = []
    for slot, (_, _, hs) in best.items():
        for h in hs:
            keys.extend(h.buckets)
            counts.extend(h.buckets.values())
            slots.extend([slot] * len(h.buckets))
    s, k, c = (np.asarray(x, dtype=np.int64) for x in (slots, keys, counts))
    order = np.lexsort((k, s))
    s, k, c = s[order], k[order], c[order]
    added = c
    if len(c):  # every value of a slot may be in the zero bucket
        starts = np.flatnonzero(np.r_[True, (np.diff(s) != 0) | (np.diff(k) != 0)])
        added = np.add.reduceat(c, starts)
        s, k = s[starts], k[starts]
    out: dict[int, LogHistogram] = {}
    for slot, (accuracy, min_value, hs) in best.items():
        lo, hi = np.searchsorted(s, slot, "left"), np.searchsorted(s, slot, "right")
        lows = [h.min for h in hs if h.min is not None]
        highs = [h.max for h in hs if h.max is not None]
        total = wire.LatencyHistogram(  # checked again as a whole
            relative_accuracy=accuracy,
            buckets=dict(zip(k[lo:hi].tolist(), added[lo:hi].tolist(), strict=True)),
            zero=sum(h.zero for h in hs),
            count=sum(h.count for h in hs),
            sum=sum(h.sum for h in hs),
            min=min(lows) if lows else None,
            max=max(highs) if highs else None,
            min_value=min_value,
        )
        out[slot] = LogHistogram.from_wire(total)
    return out


def overview(service: Service, fleet: str | None = None) -> v.Overview:
    store = service.store
    devices = store.devices.all(fleet)
    active = store.alerts.active(fleet)
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
    record = store.devices.get(fleet, device)
    if record is None:
        raise KeyError(device)
    now = time.time() if now is None else now
    hours = min(max(hours, 1 / 60), MAX_HOURS)
    since = now - hours * 3600.0
    bucket = hours * 3600.0 / MAX_POINTS
    history = store.dashboard.device_history(fleet, device, since=since, bucket=bucket)
    rows = history.windows
    return v.DeviceView(
        now=now,
        since=since,
        bucket_s=bucket,
        device=t.typed(record, t.Device),
        activity=activity(store, rows, since, bucket),
        drift=drift_series(history.drift),
        alerts=t.typed(history.alerts, list[t.Alert]),
        events=t.typed(store.telemetry.events_of(fleet, device, limit=30), list[t.Event]),
        models=model_spans(rows),
        deployments=t.typed(history.deployments, list[v.DeviceDeployment]),
    )


def model_spans(rows: Sequence[Any]) -> list[v.ModelSpan]:
    """The model versions of windows ``(received, ..., model_name, model_version)``, oldest
    first."""
    spans: dict[tuple[str | None, str | None], v.ModelSpan] = {}
    for r in rows:
        key = (r[6], r[7])
        span = spans.get(key)
        if span is None:
            spans[key] = v.ModelSpan(key[0], key[1], r[0], r[0], 1)
        else:
            span.last = r[0]
            span.windows += 1
    return sorted(spans.values(), key=lambda m: m.first)


def activity(store: Store, rows: Sequence[Any], since: float, bucket: float) -> v.Activity:
    """Windows ``(received, count, errors, bad_inputs, latency, id, ...)`` in time buckets."""
    predictions = [0] * MAX_POINTS
    errors = [0] * MAX_POINTS
    bad = [0] * MAX_POINTS
    old = [r[5] for r in rows if r[4] is None]  # stored before the latency column
    from_payload = _payload_latencies(store, old) if old else {}
    slotted = []
    decode = _latency.decode
    for r in rows:
        i = min(int((r[0] - since) // bucket), MAX_POINTS - 1)
        predictions[i] += r[1]
        errors[i] += r[2]
        bad[i] += r[3]
        h = decode(r[4]) if r[4] is not None else from_payload.get(r[5])
        if h is not None:
            slotted.append((i, h))
    merged = merged_latencies(slotted)
    p50: list[float | None] = []
    p95: list[float | None] = []
    for i in range(MAX_POINTS):
        hist = merged.get(i)
        p50.append(None if hist is None else hist.quantile(0.5))
        p95.append(None if hist is None else hist.quantile(0.95))
    return v.Activity(
        t=[since + (i + 1) * bucket for i in range(MAX_POINTS)],
        predictions_per_s=[n / bucket for n in predictions],
        errors=errors,
        bad_inputs=bad,
        p50_ms=p50,
        p95_ms=p95,
    )


def _payload_latencies(store: Store, ids: Sequence[int]) -> dict[int, _Latency]:
    return {
        wid: _Latency(**msgspec.structs.asdict(h))
        for wid, h in store.dashboard.window_latencies(ids).items()
    }


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
    rows = [r for r in store.models.all() if r["name"] == name]
    if not rows:
        raise KeyError(name)
    running = store.dashboard.running_on(name, per_version=RUNNING_ON)
    versions = []
    for r in rows:
        manifest = store.models.manifest(name, r["version"]) or {}
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
