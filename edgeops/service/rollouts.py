"""Staged rollouts, driven from storage: deployments, their devices, and the commands they send.

A deployment and each of its devices are rows (``deployments``, ``deployment_devices``); the
devices' answers are the ``update-<state>`` and ``rollback-*`` events the service already stores,
found by their command ids (``DEPLOYMENT/DEVICE/u`` for the update, ``DEPLOYMENT/DEVICE/r`` for a
rollback). :meth:`Rollouts.tick` steps every active deployment: it reads the events that arrived
since its cursor, updates device states, times out the silent, applies the verdicts of
:mod:`edgeops.service.rollout_policy`, and writes all of it in one transaction *before* it publishes
the commands that follow from it. A command that never reached its device is published again after
``resend`` seconds (a device ignores a command id it has already handled), so a crash between the
commit and the publish delays a device but never loses it.

Only one service process steps a deployment at a time: each step first takes the deployment's
lease (``lease_owner``, ``lease_until``) with one conditional ``UPDATE``. A restarted or second
process takes over when the lease runs out; deployments resume where their rows say they are.

Commands carry a ``deadline`` (updates: half the policy's timeout after the first send;
rollbacks: the whole timeout): a device that comes back online later refuses the stale command
instead of updating after its deployment gave up on it. They leave as drafts
(:class:`~edgeops.service.commands.CommandDraft`); the sender numbers and signs them
(:mod:`edgeops.service.commands`), each publication with a new counter, so a command published
again is not refused as a replay. A rollback names the version the device ran before the
deployment: devices go back in version only on such an explicit, signed rollback.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from edgeops.core import events, wire
from edgeops.core.errors import RolloutError
from edgeops.core.latency import merge_wire
from edgeops.service import rollout_policy as ro
from edgeops.service.commands import Addressed, CommandDraft
from edgeops.service.storage import Connection, Store, decode_stored
from edgeops.service.storage.deployments import ACTIVE

log = logging.getLogger(__name__)

STATES = (*ACTIVE, "completed", "aborted")
"""Every state a deployment can be in."""

SendCommands = Callable[[Sequence[Addressed]], object]
"""``send(batch)`` numbers, signs and publishes commands to devices."""


class Rollouts:
    """Creates, steps, aborts and reports deployments; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        send: SendCommands,
        bundle_url: Callable[[str], str],
        owner: str,
        lease: float = 5.0,
    ) -> None:
        self.store = store
        self.send = send
        self.bundle_url = bundle_url
        self.owner = owner
        self.lease = lease

    # --- creating -----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        version: str,
        fleet: str,
        *,
        devices: Sequence[str] = (),
        selector: dict[str, str] | None = None,
        policy: ro.RolloutPolicy | None = None,
        trigger: str = "request",
        once: bool = False,
    ) -> dict[str, Any]:
        """Start a deployment of a registered bundle; its status. With ``once``, an existing
        deployment of the same bundle to the same fleet is returned instead (alert actions)."""
        policy = policy or ro.RolloutPolicy()
        if not fleet or "+" in fleet or "#" in fleet:
            raise RolloutError("give the fleet to deploy to (--fleet)")
        now = time.time()
        dep_id = f"d{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}-{uuid.uuid4().hex[:6]}"
        rows = self.store.deployments
        with self.store.begin() as conn:
            if once:
                existing = rows.find(conn, fleet, name, version)
                if existing is not None:
                    return self._status(conn, existing)
            bundle = self.store.models.find_bundle(conn, name, version)
            if bundle is None:
                raise RolloutError(f"no bundle {name} {version} is registered with the service")
            by_id = rows.fleet_devices(conn, fleet)
            chosen = _targets(by_id, name, devices, selector)
            todo = [d for d in chosen if by_id[d].get("model_sha256") != bundle["model_sha256"]]
            if not todo:
                already = len(chosen)
                raise RolloutError(
                    f"no device to update in fleet {fleet!r}"
                    + (f" ({already} already run {name} {version})" if already else "")
                )
            order = ro.device_order([(d, bool(by_id[d]["online"])) for d in todo], dep_id)
            sizes = ro.stage_sizes(len(order), policy)
            stage_of = [
                next(i for i, s in enumerate(sizes) if pos < s) for pos in range(len(order))
            ]
            rows.add(
                conn,
                dict(
                    id=dep_id,
                    fleet=fleet,
                    model_name=name,
                    model_version=version,
                    bundle_sha256=bundle["sha256"],
                    target={
                        "devices": list(devices),
                        "selector": selector or {},
                        "model_sha256": bundle["model_sha256"],
                        "size": bundle["size"],
                        "already": len(chosen) - len(todo),
                    },
                    policy=policy.to_dict(),
                    trigger=trigger,
                    state="running",
                    stage=0,
                    stage_sizes=sizes,
                    stage_started=now,
                    bake_until=None,
                    reason=None,
                    created=now,
                    updated=now,
                    finished=None,
                    event_cursor=rows.newest_event(conn),
                    lease_owner=None,
                    lease_until=0.0,
                    history=[[now, "created", f"{len(order)} devices in {len(sizes)} stages"]],
                ),
                [
                    {
                        "deployment": dep_id,
                        "device": d,
                        "position": pos,
                        "stage": stage_of[pos],
                        "state": ro.PENDING,
                        "from_version": by_id[d].get("model_version"),
                        "from_sha256": by_id[d].get("model_sha256"),
                        "updated": now,
                    }
                    for pos, d in enumerate(order)
                ],
            )
            log.info(
                "deployment %s: %s %s to %d devices of %s in stages %s",
                dep_id,
                name,
                version,
                len(order),
                fleet,
                sizes,
            )
            return self._status(conn, dep_id)

    def abort(self, dep_id: str, reason: str = "aborted on request") -> dict[str, Any]:
        """Stop a deployment and roll back the devices it updated."""
        with self.store.begin() as conn:
            dep = self._row(conn, dep_id)
            if dep["state"] not in ACTIVE:
                raise RolloutError(f"deployment {dep_id} has already {dep['state']}")
            if dep["state"] == "running":
                self._abort(conn, dep, reason, time.time())
        self.tick(only=dep_id)
        return self.status(dep_id)

    # --- reading ------------------------------------------------------------------------------

    def status(self, dep_id: str) -> dict[str, Any]:
        with self.store.begin() as conn:
            return self._status(conn, dep_id)

    def deployments(self, *, active: bool = False) -> list[dict[str, Any]]:
        rows = self.store.deployments.all(active=active)
        for r in rows:
            for k in ("lease_owner", "lease_until", "event_cursor", "history"):
                r.pop(k, None)
        return rows

    def _row(self, conn: Connection, dep_id: str, *, lock: bool = False) -> dict[str, Any]:
        row = self.store.deployments.get(conn, dep_id, lock=lock)
        if row is None:
            raise RolloutError(f"no deployment {dep_id!r}")
        return row

    def _status(self, conn: Connection, dep_id: str) -> dict[str, Any]:
        dep = self._row(conn, dep_id)
        devs = self.store.deployments.devices(conn, dep_id)
        policy = ro.RolloutPolicy.from_dict(dep["policy"])
        t = ro.tally([d["state"] for d in devs], policy)
        counts: dict[str, int] = {}
        for d in devs:
            counts[d["state"]] = counts.get(d["state"], 0) + 1
        for k in ("lease_owner", "lease_until", "event_cursor"):
            dep.pop(k)
        return {
            **dep,
            "stages": len(dep["stage_sizes"]),
            "counts": counts,
            "tally": {
                "sent": t.sent,
                "committed": t.committed,
                "failed": t.failed,
                "decided": t.decided,
                "undecided": t.undecided,
            },
            "device_states": [
                {
                    k: d[k]
                    for k in (
                        "device",
                        "stage",
                        "state",
                        "from_version",
                        "sent",
                        "decided",
                        "reason",
                        "health",
                    )
                }
                for d in devs
            ],
        }

    # --- stepping -----------------------------------------------------------------------------

    def tick(self, only: str | None = None) -> None:
        """Step every active deployment this process holds (or can take) the lease of."""
        for dep_id in self.store.deployments.active_ids(only):
            try:
                self._step(dep_id)
            except Exception:
                log.exception("deployment %s: step failed; retried at the next tick", dep_id)

    def release(self) -> None:
        """Give up this process's leases (on a clean stop), so another process takes over."""
        self.store.deployments.release(self.owner)

    def _step(self, dep_id: str) -> None:
        now = time.time()
        outbox: list[Addressed] = []
        with self.store.begin() as conn:  # a short transaction of its own
            if not self.store.deployments.take_lease(
                conn, dep_id, self.owner, now, now + self.lease
            ):
                return
        with self.store.begin() as conn:
            dep = self._row(conn, dep_id, lock=True)
            if dep["lease_owner"] != self.owner:  # taken over meanwhile (a very slow step)
                return
            devs = {d["device"]: d for d in self.store.deployments.devices(conn, dep_id)}
            changed: dict[str, dict[str, Any]] = {}
            self._read_events(conn, dep, devs, changed, now)
            policy = ro.RolloutPolicy.from_dict(dep["policy"])
            self._time_out(dep, devs, changed, policy, now)
            if dep["state"] == "running":
                self._run(conn, dep, devs, changed, policy, outbox, now)
            if dep["state"] == "aborting":
                self._unwind(conn, dep, devs, changed, policy, outbox, now)
            # one executemany: the write lock is held for as short as it can be
            self.store.deployments.save_devices(conn, dep_id, list(changed.values()), now)
        if outbox:  # after the commit: the rows say they were sent
            self.send(outbox)

    def _read_events(
        self,
        conn: Connection,
        dep: dict[str, Any],
        devs: dict[str, dict[str, Any]],
        changed: dict[str, dict[str, Any]],
        now: float,
    ) -> None:
        rows = self.store.deployments.events_since(
            conn, dep["id"], dep["fleet"], dep["event_cursor"]
        )
        for eid, device, kind, message, command_id, data in rows:
            dep["event_cursor"] = max(dep["event_cursor"], int(eid))
            d = devs.get(device)
            if d is None or command_id != _command_id(dep["id"], device, command_id[-1]):
                continue
            new = _next_state(d["state"], kind)
            if new is None:
                continue
            d["state"] = new
            if new in ro.DECIDED:
                d["decided"] = now
            if new in (*ro.DECIDED, ro.REVERTED, ro.REVERT_FAILED):
                d["reason"] = message or None
            outcome = events.parse(kind, data)
            if isinstance(outcome, events.UpdateOutcome) and outcome.health is not None:
                d["health"] = msgspec.to_builtins(outcome.health)
            changed[device] = d
            log.info("deployment %s: %s %s", dep["id"], device, new)
        dep["_dirty"] = bool(rows)

    def _time_out(
        self,
        dep: dict[str, Any],
        devs: dict[str, dict[str, Any]],
        changed: dict[str, dict[str, Any]],
        policy: ro.RolloutPolicy,
        now: float,
    ) -> None:
        for d in devs.values():
            waiting = d["state"] == ro.SENT or d["state"] in ro.IN_PROGRESS
            if waiting and d["sent"] is not None and now - d["sent"] > policy.timeout:
                d.update(state=ro.TIMEOUT, decided=now, reason=f"no outcome in {policy.timeout}s")
                changed[d["device"]] = d
            elif d["state"] == ro.REVERTING and now - (d["sent"] or now) > policy.timeout:
                d.update(state=ro.REVERT_FAILED, reason="no answer to the rollback")
                changed[d["device"]] = d

    def _run(
        self,
        conn: Connection,
        dep: dict[str, Any],
        devs: dict[str, dict[str, Any]],
        changed: dict[str, dict[str, Any]],
        policy: ro.RolloutPolicy,
        outbox: list[Addressed],
        now: float,
    ) -> None:
        t = ro.tally([d["state"] for d in devs.values()], policy)
        reason = ro.early_abort(t, policy)
        if reason is None:
            stage = dep["stage"]
            in_stage = [d for d in devs.values() if d["stage"] <= stage]
            finished = all(
                d["state"] not in (ro.PENDING, ro.SENT, *ro.IN_PROGRESS) for d in in_stage
            )
            if finished:
                reason = ro.stage_verdict(t, policy)
            if finished and reason is None:
                if dep["bake_until"] is None:
                    self._set(conn, dep, now, bake_until=now + policy.bake)
                    self._note(conn, dep, now, f"stage {stage + 1} done; baking {policy.bake}s")
                if now >= dep["bake_until"]:
                    reason = self._regression(conn, dep, in_stage, policy)
                    if reason is None:
                        self._advance(conn, dep, now)
        if reason is not None:
            self._abort(conn, dep, reason, now)  # the same step unwinds it (pending: skipped)
            return
        if dep["state"] != "running":
            return
        for d in devs.values():
            if d["stage"] > dep["stage"]:
                continue
            if d["state"] == ro.PENDING:
                d.update(state=ro.SENT, sent=now, last_sent=now)
            elif d["state"] == ro.SENT and now - d["last_sent"] >= policy.resend:
                d["last_sent"] = now
            else:
                continue
            changed[d["device"]] = d
            outbox.append(
                Addressed(dep["fleet"], d["device"], self._update_command(dep, d, policy))
            )
        if dep.pop("_dirty", False):
            self._set(conn, dep, now)

    def _unwind(
        self,
        conn: Connection,
        dep: dict[str, Any],
        devs: dict[str, dict[str, Any]],
        changed: dict[str, dict[str, Any]],
        policy: ro.RolloutPolicy,
        outbox: list[Addressed],
        now: float,
    ) -> None:
        """Roll back every device that committed; finish once none is left to wait for."""
        for d in devs.values():
            if d["state"] == ro.PENDING:
                d["state"] = ro.SKIPPED
            elif d["state"] == ro.COMMITTED and d["from_version"] is None:
                d.update(
                    state=ro.REVERT_FAILED, reason="it ran no model before; nothing to go back to"
                )
            elif d["state"] == ro.COMMITTED:
                d.update(state=ro.REVERTING, sent=now, last_sent=now)
            elif d["state"] == ro.REVERTING and now - d["last_sent"] >= policy.resend:
                d["last_sent"] = now
            else:
                continue
            changed[d["device"]] = d
            if d["state"] == ro.REVERTING:
                outbox.append(
                    Addressed(dep["fleet"], d["device"], self._rollback_command(dep, d, policy))
                )
        waiting = (ro.SENT, *ro.IN_PROGRESS, ro.COMMITTED, ro.REVERTING)
        if not any(d["state"] in waiting for d in devs.values()):
            note = "aborted; " + rolled_back_note(devs.values())
            failed = [d["device"] for d in devs.values() if d["state"] == ro.REVERT_FAILED]
            if failed:
                note += f"; rollback failed on {', '.join(failed)}"
            self._set(conn, dep, now, state="aborted", finished=now)
            self._note(conn, dep, now, note)
            log.warning("deployment %s: %s", dep["id"], note)
        else:
            self._set(conn, dep, now)

    def _regression(
        self,
        conn: Connection,
        dep: dict[str, Any],
        in_stage: list[dict[str, Any]],
        policy: ro.RolloutPolicy,
    ) -> str | None:
        """The regression gates over the committed devices of the deployment so far."""
        committed = [d for d in in_stage if d["state"] == ro.COMMITTED]
        if not committed:
            return None
        payloads = self.store.deployments.window_payloads
        new_rows: list[bytes] = []
        old_rows: list[bytes] = []
        for d in committed:
            # the service's clock (when windows arrived), not the devices'
            new_rows += payloads(
                conn, dep["fleet"], d["device"], dep["model_version"], since=d["decided"] or 0.0
            )
            if d["from_version"] is not None and d["sent"] is not None:
                old_rows += payloads(
                    conn,
                    dep["fleet"],
                    d["device"],
                    d["from_version"],
                    since=d["sent"] - 600.0,
                    until=d["sent"],
                )
        new = _serving(new_rows)
        old = _serving(old_rows) if old_rows else None
        return ro.regression_verdict(new, old, policy)

    def _advance(self, conn: Connection, dep: dict[str, Any], now: float) -> None:
        stage = dep["stage"]
        if stage + 1 < len(dep["stage_sizes"]):
            self._set(conn, dep, now, stage=stage + 1, stage_started=now, bake_until=None)
            self._note(conn, dep, now, f"stage {stage + 2} started")
        else:
            self._set(conn, dep, now, state="completed", finished=now)
            self._note(conn, dep, now, "completed")
            log.info("deployment %s completed", dep["id"])

    def _abort(self, conn: Connection, dep: dict[str, Any], reason: str, now: float) -> None:
        self._set(conn, dep, now, state="aborting", reason=reason)
        self._note(conn, dep, now, f"aborting: {reason}")
        log.warning("deployment %s: aborting: %s", dep["id"], reason)

    def _set(self, conn: Connection, dep: dict[str, Any], now: float, **values: Any) -> None:
        dep.update(values, updated=now)
        self.store.deployments.update(
            conn, dep["id"], **values, updated=now, event_cursor=dep["event_cursor"]
        )

    def _note(self, conn: Connection, dep: dict[str, Any], now: float, what: str) -> None:
        dep["history"] = [*dep["history"], [now, dep["state"], what]]
        self.store.deployments.update(conn, dep["id"], history=dep["history"])

    # --- commands -----------------------------------------------------------------------------

    def _update_command(
        self, dep: dict[str, Any], d: dict[str, Any], policy: ro.RolloutPolicy
    ) -> CommandDraft:
        return CommandDraft(
            id=_command_id(dep["id"], d["device"], "u"),
            args=wire.UpdateArgs(
                url=self.bundle_url(dep["bundle_sha256"]),
                sha256=dep["bundle_sha256"],
                size=dep["target"]["size"],
                name=dep["model_name"],
                version=dep["model_version"],
                health=policy.health(),
            ),
            issued=d["sent"],
            deadline=d["sent"] + policy.timeout / 2,
        )

    def _rollback_command(
        self, dep: dict[str, Any], d: dict[str, Any], policy: ro.RolloutPolicy
    ) -> CommandDraft:
        return CommandDraft(
            id=_command_id(dep["id"], d["device"], "r"),
            args=wire.RollbackArgs(
                version=d["from_version"], from_sha256=dep["target"]["model_sha256"]
            ),
            issued=d["sent"],
            deadline=d["sent"] + policy.timeout,
        )


def _command_id(dep_id: str, device: str, kind: str) -> str:
    return f"{dep_id}/{device}/{kind}"


def _next_state(state: str, kind: str) -> str | None:
    """A device's deployment state after an event of ``kind``; None when it changes nothing."""
    waiting = state == ro.SENT or state in ro.IN_PROGRESS or state == ro.TIMEOUT
    if kind.startswith("update-"):
        s = kind.removeprefix("update-")
        if s in ro.IN_PROGRESS:
            return s if state == ro.SENT or state in ro.IN_PROGRESS else None
        if s == "committed" and waiting:
            return ro.COMMITTED
        if s == "failed" and waiting:
            return ro.FAILED
        if s == "rolled-back" and waiting:
            return ro.ROLLED_BACK
        return None
    if state == ro.REVERTING:
        if kind == "rollback-done":
            return ro.REVERTED
        if kind == "rollback-failed":
            return ro.REVERT_FAILED
    return None


def _targets(
    known: dict[str, dict[str, Any]],
    name: str,
    devices: Sequence[str],
    selector: dict[str, str] | None,
) -> list[str]:
    """The devices a deployment may update: the listed ones, or the fleet's online devices that
    run a model of ``name`` (or none) and match every label of the selector. A device offline
    when the deployment starts is left out unless it is listed: a fleet's long-gone devices
    would otherwise time out in every deployment."""
    if devices:
        unknown = sorted(set(devices) - set(known))
        if unknown:
            raise RolloutError(f"unknown device(s) in the fleet: {', '.join(unknown)}")
        return sorted(set(devices))
    out = []
    for dev, rec in sorted(known.items()):
        if rec.get("model_name") not in (None, name) or not rec.get("online"):
            continue
        labels = rec.get("labels") or {}
        if selector and any(labels.get(k) != v for k, v in selector.items()):
            continue
        out.append(dev)
    return out


def _serving(payloads: Sequence[bytes]) -> ro.Serving:
    """Merge telemetry windows into one model's serving record."""
    tele = [t for t in (decode_stored(p) for p in payloads) if t is not None]
    lat = [t.latency for t in tele if t.latency.count]
    p95 = merge_wire(lat).quantile(0.95) if lat else None
    return ro.Serving(
        predictions=sum(t.count for t in tele), errors=sum(t.errors for t in tele), p95_ms=p95
    )


def rolled_back_note(devs: Iterable[Mapping[str, Any]]) -> str:
    """How many devices went back, counted as their rows say it: those the abort rolled back
    (reverted) and those whose own health window did (rolled-back)."""
    states = [d["state"] for d in devs]
    reverted, own = states.count(ro.REVERTED), states.count(ro.ROLLED_BACK)
    total = reverted + own
    text = f"{total} device{'' if total == 1 else 's'} rolled back"
    if reverted and own:
        text += f" ({reverted} by the abort, {own} by their own health check)"
    elif own:
        text += " by their own health check"
    return text
