"""Drift evaluation: windows from storage, distances from :mod:`edgeops.drift`, alerts with
hysteresis, retained alert messages, and policy actions.

A device is evaluated after windows of it are stored, once per pending evaluation (coalesced,
:mod:`edgeops.service.evaluation`): the span ends at its newest stored window and holds its
newest windows of the same model in arrival order (the service's clock: devices' clocks may be
wrong), as many as it takes to reach the minimum sample count (at most ``span_windows``, none
received more than ``span_seconds`` before the newest). A window that reaches the minimum alone
is the span, read from nothing but memory; otherwise only the span's windows not in memory are
read back. Hysteresis counts evaluations, not windows: under a burst (a backlog drained in
batches) several windows of one device make one span and one verdict, so an alert may take more
windows to raise or clear than ``k_raise`` or ``k_clear``. A fleet (per model version) is
evaluated every ``fleet_interval`` seconds over all its devices' windows in the span; a group
whose evaluation fails is logged and counted, and the others go on. Every raw distance is
stored, alert or not. Alert state transitions happen inside one transaction (the drift rows with
one ``executemany``, the evaluation's alert states locked with one ``SELECT … FOR UPDATE``,
stepped in Python and written back with one ``executemany``) that also records the newest window
they account for, so two service processes never advance one state twice.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from edgeops import drift as d
from edgeops import topics, wire
from edgeops.service import db
from edgeops.service.baselines import Baseline, Baselines
from edgeops.service.config import ServiceConfig
from edgeops.service.logs import SafeLog
from edgeops.window_merge import merge_windows

log = logging.getLogger(__name__)

FLEET_SCOPE_DEVICE = "_fleet"


class Engine:
    """Evaluates drift and keeps alerts; ``publish(topic, payload)`` sends retained alerts."""

    def __init__(
        self,
        store: db.Store,
        config: ServiceConfig,
        publish: Callable[[str, bytes], None] | None = None,
        deploy: Callable[[str, str, dict[str, Any]], None] | None = None,
        baselines: Baselines | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.publish = publish
        self.deploy = deploy
        """``deploy(bundle, fleet, alert)``: the ``deploy`` alert action."""
        self.baselines = baselines or Baselines(store)
        self.fleet_errors = 0
        self._log = SafeLog(log)

    def _baseline(self, name: str, version: str) -> Baseline | None:
        return self.baselines.get(name, version)

    # --- spans --------------------------------------------------------------------------------

    def _span(self, rows: Sequence[db.StoredWindow], min_samples: int) -> list[db.StoredWindow]:
        span: list[db.StoredWindow] = []
        samples = 0
        for r in rows:
            span.append(r)
            samples += r.telemetry.count
            if samples >= min_samples or len(span) >= self.config.span_windows:
                break
        return span

    def evaluate_device(
        self, newest: db.StoredWindow, known: Mapping[int, db.StoredWindow] | None = None
    ) -> None:
        """Evaluate a device's span ending at its window ``newest`` (the newest of a batch).

        When ``newest`` alone holds ``min_samples`` it is the span and nothing is read; else the
        span's older windows are read, except those in ``known`` (the batch just stored)."""
        t = newest.telemetry
        if t.model is None:
            return
        if self._baseline(t.model.name, t.model.version) is None:
            return
        min_samples = self.config.policy(t.model.name).drift.min_samples
        if t.count >= min_samples or self.config.span_windows <= 1:
            span = [newest]
        else:
            span = self.store.device_span(
                newest,
                since=newest.received - self.config.span_seconds,
                min_samples=min_samples,
                limit=self.config.span_windows,
                known=known or {newest.id: newest},
            )
        self._evaluate(
            "device", newest.fleet, t.device, t.model.name, t.model.version, span, newest.id
        )

    def evaluate_fleets(self, beat: Callable[[], None] | None = None) -> int:
        """Evaluate every (fleet, model version) with windows received in the span; a group
        that fails is logged and counted and the others go on (``beat()`` after each: the
        supervisor's heartbeat). The groups that failed."""
        since = time.time() - self.config.span_seconds
        groups: dict[tuple[str, str, str], list[db.StoredWindow]] = {}
        for r in self.store.recent_windows(since=since, limit=20_000):
            m = r.telemetry.model
            if m is not None:
                groups.setdefault((r.fleet, m.name, m.version), []).append(r)
        failed = 0
        for (fleet, name, version), rows in groups.items():
            try:
                policy = self.config.policy(name)
                per_device: dict[str, list[db.StoredWindow]] = {}
                for r in rows:  # newest first: each device's span is its newest windows
                    per_device.setdefault(r.device, []).append(r)
                span = [
                    w
                    for ws in per_device.values()
                    for w in self._span(ws, policy.drift.min_samples)
                ]
                newest = max(r.id for r in rows)
                self._evaluate("fleet", fleet, FLEET_SCOPE_DEVICE, name, version, span, newest)
            except Exception as e:
                failed += 1
                self._log.error(
                    f"fleet {fleet}",
                    "fleet drift evaluation of %s %s %s failed: %s: %s",
                    fleet,
                    name,
                    version,
                    type(e).__name__,
                    e,
                )
            if beat is not None:
                beat()
        self.fleet_errors += failed
        return failed

    def _evaluate(
        self,
        scope: str,
        fleet: str,
        device: str,
        name: str,
        version: str,
        span: Sequence[db.StoredWindow],
        window_id: int,
    ) -> None:
        base = self._baseline(name, version)
        if base is None or not span:
            return
        profile, manifest = base.profile, base.manifest
        policy = self.config.policy(name)
        th = policy.drift
        tele = [r.telemetry for r in span]
        inputs = merge_windows([t.inputs for t in tele])
        outputs = merge_windows([t.outputs for t in tele])
        result = d.evaluate(profile, inputs, outputs, th)
        now = time.time()
        samples = sum(t.count for t in tele)
        verdicts: list[tuple[str, str, bool | None, dict[str, Any]]] = []
        records: list[dict[str, Any]] = []

        def record(kind: str, feature: str, **values: Any) -> None:
            records.append(
                {
                    "evaluated": now,
                    "scope": scope,
                    "fleet": fleet,
                    "device": device,
                    "model_name": name,
                    "model_version": version,
                    "feature": feature,
                    "kind": kind,
                    "samples": samples,
                    **dict.fromkeys(("js", "psi", "wasserstein", "linf", "value", "drifted")),
                    "reason": None,
                    **values,
                }
            )

        for f, kind in [(f, "input") for f in result.features] + [
            (f, "output") for f in result.outputs
        ]:
            enough = f.samples >= th.min_samples
            record(
                kind,
                f.feature,
                samples=f.samples,
                js=f.js,
                psi=f.psi,
                wasserstein=f.wasserstein,
                linf=f.linf,
                drifted=f.drifted if enough else None,
                reason=f.reason,
            )
            verdicts.append((kind, f.feature, f.drifted if enough else None, _distances(f)))
        enough = samples >= th.min_samples
        record("dataset", "*", drifted=result.dataset_drifted if enough else None)
        verdicts.append(("dataset", "*", result.dataset_drifted if enough else None, {}))

        reference = (manifest.get("evaluation") or {}).get("test", {}).get("accuracy")
        correct = sum(t.feedback.correct for t in tele)
        total = sum(t.feedback.total for t in tele)
        if reference is not None and total > 0:
            c = d.accuracy_drop(
                correct,
                total,
                float(reference),
                th.accuracy_confidence,
                min_feedback=th.min_feedback,
            )
            verdict = c.drifted if total >= th.min_feedback else None
            record(
                "concept",
                "accuracy",
                samples=total,
                value=c.accuracy,
                drifted=verdict,
                reason=c.reason,
            )
            verdicts.append(
                (
                    "concept",
                    "accuracy",
                    verdict,
                    {"accuracy": c.accuracy, "upper": c.upper, "reference": reference},
                )
            )
        if policy.latency_budget_ms is not None:
            lat = d.latency_p95_over_budget([t.latency for t in tele], policy.latency_budget_ms)
            record("latency", "p95", value=lat.p95, drifted=lat.over)
            verdicts.append(
                ("latency", "p95", lat.over, {"p95_ms": lat.p95, "budget_ms": lat.budget})
            )

        changed = self._store_and_step(
            scope, fleet, device, name, version, window_id, records, verdicts, th
        )
        if changed:
            self._announce(fleet, device)
            for kind, feature, transition, detail in changed:
                if transition == "raised":
                    self._act(policy.on_alert, fleet, device, name, version, kind, feature, detail)

    def _store_and_step(
        self,
        scope: str,
        fleet: str,
        device: str,
        name: str,
        version: str,
        window_id: int,
        records: list[dict[str, Any]],
        verdicts: list[tuple[str, str, bool | None, dict[str, Any]]],
        th: d.DriftThresholds,
    ) -> list[tuple[str, str, str, dict[str, Any]]]:
        changed: list[tuple[str, str, str, dict[str, Any]]] = []
        now = time.time()
        keys = ["|".join((scope, fleet, device, name, version, k, f)) for k, f, _, _ in verdicts]
        with self.store.begin() as conn:
            self.store.add_drift(conn, records)
            states = self.store.lock_alert_states(conn, keys, now)
            updates: list[dict[str, Any]] = []
            raised: list[dict[str, Any]] = []
            cleared: list[str] = []
            for key, (kind, feature, verdict, detail) in zip(keys, verdicts, strict=True):
                row = states[key]
                if row.last_window >= window_id:
                    continue  # another process already accounted for this window
                new, transition = d.step(
                    d.AlertState(row.active, row.over, row.under), verdict, th.k_raise, th.k_clear
                )
                updates.append(
                    {
                        "key": key,
                        "active": new.active,
                        "over": new.over,
                        "under": new.under,
                        "last_window": window_id,
                        "updated": now,
                    }
                )
                if transition == "raised":
                    raised.append(
                        {
                            "key": key,
                            "scope": scope,
                            "fleet": fleet,
                            "device": device,
                            "model_name": name,
                            "model_version": version,
                            "feature": feature,
                            "kind": kind,
                            "raised": now,
                            "detail": detail,
                        }
                    )
                elif transition == "cleared":
                    cleared.append(key)
                if transition != "none":
                    changed.append((kind, feature, transition, detail))
            self.store.save_alert_states(conn, updates)
            self.store.raise_alerts(conn, raised)
            self.store.clear_alerts(conn, cleared, now)
        for kind, feature, what, _ in changed:
            log.warning(
                "alert %s: %s %s %s %s %s/%s",
                what,
                scope,
                fleet,
                device,
                kind,
                feature,
                f"{name} {version}",
            )
        return changed

    def _announce(self, fleet: str, device: str) -> None:
        """Publish the device's current alerts, retained."""
        if self.publish is None:
            return
        active = self.store.active_alerts(fleet=fleet, device=device)
        msg = wire.Alert(
            fleet=fleet,
            device=device,
            sent=time.time(),
            alerts=[
                wire.ActiveAlert(
                    kind=a["kind"],
                    feature=a["feature"],
                    model=a["model_name"],
                    version=a["model_version"],
                    raised=a["raised"],
                    detail=a["detail"] or {},
                )
                for a in active
            ],
        )
        self.publish(topics.alert(fleet, device), wire.encode(msg))

    def _act(
        self,
        action: Any,
        fleet: str,
        device: str,
        name: str,
        version: str,
        kind: str,
        feature: str,
        detail: dict[str, Any],
    ) -> None:
        alert = {
            "fleet": fleet,
            "device": device,
            "model": name,
            "version": version,
            "kind": kind,
            "feature": feature,
            "detail": detail,
        }
        if action.command:
            env = {**os.environ, "EDGEOPS_ALERT": json.dumps(alert)}
            try:
                subprocess.Popen(list(action.command), env=env, start_new_session=True)
                log.info("alert action: started %s", " ".join(action.command))
            except OSError as e:
                log.error("alert action %s failed to start: %s", action.command[0], e)
        if action.deploy:
            if self.deploy is None:
                log.error("alert action: deploy %s: no deployer configured", action.deploy)
            else:
                self.deploy(action.deploy, fleet, alert)


def _distances(f: d.FeatureDrift) -> dict[str, Any]:
    """The alert detail of one feature: its distances (those it has) and its sample count."""
    out: dict[str, Any] = {"samples": f.samples}
    for k in ("js", "psi", "wasserstein", "linf"):
        v = getattr(f, k)
        if v is not None:
            out[k] = v
    return out
