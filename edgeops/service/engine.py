"""Drift evaluation: windows from storage, verdicts from :mod:`edgeops.drift`, alerts with
hysteresis, retained alert messages, and policy actions.

Two verdicts per device span: against the training data (the bundle's baseline) and since
deploy (the device's reference: its first healthy windows on the version, collected in the
``device_references`` table and built with :func:`edgeops.drift.reference_from_windows` once
they hold the policy's rows and windows). Both are stored with every check (value, threshold,
noise floor) and the reason; the model's ``alert_on`` says which raise alerts. Once a device's
reference exists, its design effects (the spread between its windows) widen the floors of both
verdicts. A device's alerts raised against another model or version than the one it now runs
are closed, with that reason, when its next window is evaluated.

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
import math
import os
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from edgeops import drift as d
from edgeops.core import topics, wire
from edgeops.core.window.merge import merge_windows
from edgeops.service.baselines import Baseline, Baselines
from edgeops.service.config import ReferencePolicy, ServiceConfig
from edgeops.service.logs import SafeLog
from edgeops.service.storage import Store, StoredWindow

log = logging.getLogger(__name__)

FLEET_SCOPE_DEVICE = "_fleet"
MAX_CACHED = 100_000
"""Per-device entries an engine keeps in memory (ready references, versions seen)."""


class Engine:
    """Evaluates drift and keeps alerts; ``publish(topic, payload)`` sends retained alerts."""

    def __init__(
        self,
        store: Store,
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
        self._references: OrderedDict[tuple[str, str, str, str], d.Reference] = OrderedDict()
        """Ready per-device references (fleet, device, name, version), the newest kept."""
        self._running: OrderedDict[tuple[str, str], tuple[str, str]] = OrderedDict()
        """What each device was last seen running (its other versions' alerts are closed)."""

    def _baseline(self, name: str, version: str) -> Baseline | None:
        return self.baselines.get(name, version)

    # --- spans --------------------------------------------------------------------------------

    def evaluate_device(
        self, newest: StoredWindow, known: Mapping[int, StoredWindow] | None = None
    ) -> None:
        """Evaluate a device's span ending at its window ``newest`` (the newest of a batch).

        Alerts raised against another model or version than ``newest``'s are closed first,
        with that reason. When ``newest`` alone holds ``min_samples`` non-missing values of
        every input it is the span and nothing is read; else the span's older windows are read
        (enough rows for the input with the most missing values), except those in ``known``
        (the batch just stored)."""
        t = newest.telemetry
        if t.model is None:
            return
        self._close_other_versions(newest.fleet, t.device, t.model.name, t.model.version)
        if self._baseline(t.model.name, t.model.version) is None:
            return
        min_samples = self.config.policy(t.model.name).drift.min_samples
        need = _rows_needed(t, min_samples)
        if t.count >= need or self.config.span_windows <= 1:
            span = [newest]
        else:
            span = self.store.telemetry.device_span(
                newest,
                since=newest.received - self.config.span_seconds,
                min_samples=need,
                limit=self.config.span_windows,
                known=known or {newest.id: newest},
            )
        self._evaluate(
            "device", newest.fleet, t.device, t.model.name, t.model.version, span, newest.id
        )

    def _close_other_versions(self, fleet: str, device: str, name: str, version: str) -> None:
        """Close the device's alerts of versions it no longer runs (checked when this process
        first sees the device, and whenever its version changes)."""
        key = (fleet, device)
        if self._running.get(key) == (name, version):
            return
        with self.store.begin() as conn:
            closed = self.store.alerts.close_other_versions(
                conn, fleet, device, name, version, time.time()
            )
        self._running[key] = (name, version)
        if len(self._running) > MAX_CACHED:
            self._running.pop(next(iter(self._running)))
        if closed:
            for a in closed:
                log.warning(
                    "alert closed: %s %s %s %s/%s (%s %s): the device now runs %s %s",
                    a["scope"], fleet, device, a["kind"], a["feature"],
                    a["model_name"], a["model_version"], name, version,
                )  # fmt: skip
            self._announce(fleet, device)

    def evaluate_fleets(self, beat: Callable[[], None] | None = None) -> int:
        """Evaluate every (fleet, model version) with windows received in the span; a group
        that fails is logged and counted and the others go on (``beat()`` after each: the
        supervisor's heartbeat). Fleet-wide alerts of a version no device of the fleet ran in
        the span are closed, with that reason. The groups that failed."""
        since = time.time() - self.config.span_seconds
        groups: dict[tuple[str, str, str], list[StoredWindow]] = {}
        for r in self.store.telemetry.recent_windows(since=since, limit=20_000):
            m = r.telemetry.model
            if m is not None:
                groups.setdefault((r.fleet, m.name, m.version), []).append(r)
        failed = 0
        for fleet in sorted({f for f, _, _ in groups}):
            running = {(n, v) for f, n, v in groups if f == fleet}
            with self.store.begin() as conn:
                closed = self.store.alerts.close_fleet_alerts_of(
                    conn, fleet, running, time.time(), FLEET_SCOPE_DEVICE
                )
            if closed:
                self._announce(fleet, FLEET_SCOPE_DEVICE)
        for (fleet, name, version), rows in groups.items():
            try:
                policy = self.config.policy(name)
                per_device: dict[str, list[StoredWindow]] = {}
                for r in rows:  # newest first: each device's span is its newest windows
                    per_device.setdefault(r.device, []).append(r)
                span = [
                    w
                    for ws in per_device.values()
                    for w in d.newest_span(
                        ws,
                        lambda r: r.telemetry.count,
                        min_samples=policy.drift.min_samples,
                        limit=self.config.span_windows,
                    )
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

    # --- per-device references ----------------------------------------------------------------

    def _reference(
        self,
        fleet: str,
        device: str,
        name: str,
        version: str,
        span: Sequence[StoredWindow],
        baseline: Baseline,
        healthy: bool,
    ) -> d.Reference | None:
        """The device's reference for (name, version) when it is ready; else, when the span is
        ``healthy``, its windows not yet taken and served without errors are added to it (and it
        is built once it holds the policy's rows and windows)."""
        key = (fleet, device, name, version)
        found = self._references.get(key)
        if found is not None:
            return found
        policy = self.config.policy(name).reference
        now = time.time()
        ref: d.Reference | None
        with self.store.begin() as conn:
            row = self.store.references.lock(conn, fleet, device, name, version, now)
            ref = None
            if row["state"] == "ready":
                try:
                    ref = d.Reference.from_dict(row["data"])
                except ValueError as e:  # a row that no longer reads: collected again
                    self._log.error(
                        "reference",
                        "reference of %s/%s %s %s is unreadable (%s): collecting it again",
                        fleet, device, name, version, e,
                    )  # fmt: skip
                    row.update(state="collecting", rows=0, window_ids=[], data=None, ready=None)
            if ref is None:
                ref = self._collect(row, span, baseline, policy, now, healthy)
                self.store.references.save(conn, row)
        if ref is not None:
            self._references[key] = ref
            if len(self._references) > MAX_CACHED:
                self._references.pop(next(iter(self._references)))
        return ref

    def _collect(
        self,
        row: dict[str, Any],
        span: Sequence[StoredWindow],
        baseline: Baseline,
        policy: ReferencePolicy,
        now: float,
        healthy: bool,
    ) -> d.Reference | None:
        """Add the span's healthy windows newer than the reference's last to ``row`` (in
        place); the built reference once ``row`` holds enough, else None."""
        ids: list[int] = list(row["window_ids"])
        for w in sorted(span, key=lambda w: w.id):
            t = w.telemetry
            if w.id <= row["last_window"]:
                continue
            row["last_window"] = w.id
            if healthy and t.count > 0 and t.errors == 0 and t.bad_inputs == 0:
                ids.append(w.id)
                row["rows"] += t.count
        row["window_ids"] = ids
        if row["rows"] < policy.rows or len(ids) < policy.min_windows:
            return None
        known = {w.id: w for w in span}
        missing = [i for i in ids if i not in known]
        found = {
            w.id: w
            for w in self.store.telemetry.windows_by_id(row["fleet"], row["device"], missing)
        }
        windows = [(known.get(i) or found.get(i)) for i in ids]
        tele = [w.telemetry for w in windows if w is not None]
        ref = d.reference_from_windows(baseline.profile, tele, rows=row["rows"])
        row.update(state="ready", data=ref.to_dict(), ready=now, window_ids=[])
        log.info(
            "reference ready: %s/%s %s %s from %d windows, %d rows",
            row["fleet"], row["device"], row["model_name"], row["model_version"],
            ref.windows, ref.rows,
        )  # fmt: skip
        return ref

    # --- one evaluation -----------------------------------------------------------------------

    def _evaluate(
        self,
        scope: str,
        fleet: str,
        device: str,
        name: str,
        version: str,
        span: Sequence[StoredWindow],
        window_id: int,
    ) -> None:
        base = self._baseline(name, version)
        if base is None or not span:
            return
        profile, manifest = base.profile, base.manifest
        policy = self.config.policy(name)
        th = policy.drift
        tele = [r.telemetry for r in span]
        if scope == "device":  # the span, newest first: each feature takes what it needs
            merged = d.Span.of(profile, tele, th.min_samples)  # merged once, judged up to 3 times
            ref = self._references.get((fleet, device, name, version))
            effects = None if ref is None else ref.design_effects
            training = d.judge(profile, merged, th, design_effects=effects)
            if ref is None:
                # A span is healthy unless the training verdicts alert and one of them drifts,
                # judged without the design effect: drift that begins inside a span widens its
                # floors, and its first windows must not enter the reference.
                judged = (*training.features, *training.outputs)
                healthy = True
                if "training" in policy.alert_on:
                    strict = training
                    if any(f.design_effect > 1 for f in judged):
                        strict = d.judge(profile, merged, replace(th, design_effect=False))
                    healthy = not any(f.drifted for f in (*strict.features, *strict.outputs))
                ref = self._reference(fleet, device, name, version, span, base, healthy)
                if ref is not None:
                    effects = ref.design_effects
                    training = d.judge(profile, merged, th, design_effects=effects)
            results = {"training": training}
            if ref is not None:
                results["deploy"] = d.judge(ref.profile, merged, th, design_effects=effects)
        else:  # a fleet: every device's span, merged
            inputs = merge_windows([t.inputs for t in tele])
            outputs = merge_windows([t.outputs for t in tele])
            results = {"training": d.evaluate(profile, inputs, outputs, th)}
        stored = d.span_verdicts(results)  # every verdict is stored; those alerted on step
        verdicts = [v for v in stored if v.reference in policy.alert_on]
        test = {} if manifest.evaluation is None else manifest.evaluation.test
        accuracy = test.get("accuracy")
        count = test.get("count")
        correct = sum(t.feedback.correct for t in tele)
        total = sum(t.feedback.total for t in tele)
        if accuracy is not None and total > 0:
            concept = d.Verdict.of_concept(
                d.accuracy_drop(
                    correct,
                    total,
                    float(accuracy),
                    th.accuracy_confidence,
                    min_feedback=th.min_feedback,
                    reference_count=int(count) if isinstance(count, int) and count > 0 else None,
                )
            )
            stored.append(concept)
            verdicts.append(concept)
        if policy.latency_budget_ms is not None:
            latency = d.Verdict.of_latency(
                d.latency_p95_over_budget([t.latency for t in tele], policy.latency_budget_ms)
            )
            stored.append(latency)
            verdicts.append(latency)
        now = time.time()
        samples = sum(t.count for t in tele)
        records = [
            {
                "evaluated": now,
                "scope": scope,
                "fleet": fleet,
                "device": device,
                "model_name": name,
                "model_version": version,
                "samples": samples if v.samples is None else v.samples,
                **v.columns(),
            }
            for v in stored
        ]

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
        verdicts: list[d.Verdict],
        th: d.DriftThresholds,
    ) -> list[tuple[str, str, str, dict[str, Any]]]:
        changed: list[tuple[str, str, str, dict[str, Any]]] = []
        now = time.time()
        keys = [v.key(scope, fleet, device, name, version) for v in verdicts]
        with self.store.begin() as conn:
            self.store.drift.add(conn, records)
            states = self.store.alerts.lock_states(conn, keys, now)
            updates: list[dict[str, Any]] = []
            raised: list[dict[str, Any]] = []
            cleared: list[str] = []
            for key, v in zip(keys, verdicts, strict=True):
                row = states[key]
                if row.last_window >= window_id:
                    continue  # another process already accounted for this window
                new, transition = d.step(
                    d.AlertState(row.active, row.over, row.under), v.drifted, th.k_raise, th.k_clear
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
                            "feature": v.feature,
                            "kind": v.kind,
                            "reference": v.reference,
                            "raised": now,
                            "detail": dict(v.detail),
                        }
                    )
                elif transition == "cleared":
                    cleared.append(key)
                if transition != "none":
                    changed.append((v.kind, v.feature, transition, dict(v.detail)))
            self.store.alerts.save_states(conn, updates)
            self.store.alerts.add(conn, raised)
            self.store.alerts.clear(conn, cleared, now)
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
        active = self.store.alerts.active(fleet=fleet, device=device)
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


def _rows_needed(t: wire.Telemetry, min_samples: int) -> int:
    """Rows a span needs for ``min_samples`` non-missing values of every input, judged by the
    missing share of each input in ``t`` (at most 10 times ``min_samples``)."""
    worst = 0.0
    for w in t.inputs:
        if isinstance(w, wire.NumericWindow):
            values = sum(w.counts)
        elif isinstance(w, wire.CategoricalWindow):
            values = sum(w.counts) + w.other
        else:
            continue
        rows = values + w.missing
        if rows:
            worst = max(worst, w.missing / rows)
    return min(math.ceil(min_samples / max(1.0 - worst, 0.1)), 10 * min_samples)
