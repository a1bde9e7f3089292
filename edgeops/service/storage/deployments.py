"""Deployments in storage: each deployment (``deployments``) and each of its devices
(``deployment_devices``), plus what a rollout step reads of the devices' messages (their events
since the deployment's cursor, the windows of the regression check).

A step of :mod:`edgeops.service.rollouts` runs in one transaction: it opens it
(``store.begin()``) and passes the connection to the methods here, so that the lease, the
locked deployment row and the changed device rows commit together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.service.storage.schema import deployment_devices, deployments, devices, events, windows

ACTIVE = ("running", "aborting")
"""The states of a deployment that is still stepped."""
DEVICE_FIELDS = ("state", "sent", "last_sent", "decided", "reason", "health")
"""The columns of a deployment's device that a step changes."""

DEP = deployments.c
DD = deployment_devices.c


class DeploymentRows:
    """Reads and writes of deployments and their devices."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._set_devices = (
            sa.update(deployment_devices)
            .where(DD.deployment == sa.bindparam("b_dep"), DD.device == sa.bindparam("b_dev"))
            .values({k: sa.bindparam(k) for k in (*DEVICE_FIELDS, "updated")})
        )

    # --- creating, in the creating transaction ------------------------------------------------

    def find(self, conn: Connection, fleet: str, name: str, version: str) -> str | None:
        """The id of a deployment of (name, version) to ``fleet``, if there is one."""
        row = conn.execute(
            sa.select(DEP.id).where(
                DEP.fleet == fleet, DEP.model_name == name, DEP.model_version == version
            )
        ).first()
        return None if row is None else str(row[0])

    def fleet_devices(self, conn: Connection, fleet: str) -> dict[str, dict[str, Any]]:
        """The fleet's devices (rows of ``devices``) by name: who a deployment may update."""
        known = conn.execute(sa.select(devices).where(devices.c.fleet == fleet)).mappings()
        return {d["device"]: dict(d) for d in known}

    def newest_event(self, conn: Connection) -> int:
        """The id of the newest stored event (0: none): a new deployment's event cursor."""
        return int(conn.execute(sa.select(sa.func.max(events.c.id))).scalar() or 0)

    def add(
        self, conn: Connection, deployment: Mapping[str, Any], devices: Sequence[Mapping[str, Any]]
    ) -> None:
        """Insert a deployment's row and its devices' rows."""
        conn.execute(sa.insert(deployments).values(**deployment))
        conn.execute(sa.insert(deployment_devices), [dict(d) for d in devices])

    # --- stepping, in the step's transaction --------------------------------------------------

    def get(self, conn: Connection, dep_id: str, *, lock: bool = False) -> dict[str, Any] | None:
        """A deployment's row (locked until the transaction ends with ``lock``)."""
        q = sa.select(deployments).where(DEP.id == dep_id)
        row = conn.execute(q.with_for_update() if lock else q).mappings().first()
        return None if row is None else dict(row)

    def devices(self, conn: Connection, dep_id: str) -> list[dict[str, Any]]:
        """A deployment's devices, in their rollout order."""
        q = sa.select(deployment_devices).where(DD.deployment == dep_id).order_by(DD.position)
        return [dict(r) for r in conn.execute(q).mappings()]

    def take_lease(
        self, conn: Connection, dep_id: str, owner: str, now: float, until: float
    ) -> bool:
        """Take (or keep) the lease of an active deployment for ``owner`` until ``until``, with
        one conditional ``UPDATE``: False when another owner holds a lease that has not run out
        at ``now``, or the deployment is no longer active."""
        res = conn.execute(
            sa.update(deployments)
            .where(
                DEP.id == dep_id,
                DEP.state.in_(ACTIVE),
                sa.or_(DEP.lease_owner == owner, DEP.lease_until < now),
            )
            .values(lease_owner=owner, lease_until=until)
        )
        return res.rowcount == 1

    def events_since(self, conn: Connection, dep_id: str, fleet: str, cursor: int) -> Sequence[Any]:
        """The events of ``fleet`` answering the deployment's commands (``DEPLOYMENT/…``)
        stored after the event id ``cursor``, oldest first: ``(id, device, kind, message,
        command_id, data)``."""
        e = events.c
        return conn.execute(
            sa.select(e.id, e.device, e.kind, e.message, e.command_id, e.data)
            .where(e.command_id.like(f"{dep_id}/%"), e.id > cursor, e.fleet == fleet)
            .order_by(e.id)
        ).all()

    def window_payloads(
        self,
        conn: Connection,
        fleet: str,
        device: str,
        version: str,
        *,
        since: float,
        until: float | None = None,
    ) -> list[bytes]:
        """The payloads of the device's windows of model ``version`` received (the service's
        clock, not the device's) from ``since`` (to ``until``): what the regression check
        compares."""
        w = windows.c
        q = sa.select(w.payload).where(w.fleet == fleet, w.device == device)
        q = q.where(w.model_version == version)
        if until is not None:
            q = q.where(w.received <= until)
        q = q.where(w.received >= since)
        return [r[0] for r in conn.execute(q).all()]

    def update(self, conn: Connection, dep_id: str, **values: Any) -> None:
        """Set columns of a deployment's row."""
        conn.execute(sa.update(deployments).where(DEP.id == dep_id).values(**values))

    def save_devices(
        self, conn: Connection, dep_id: str, changed: Sequence[Mapping[str, Any]], now: float
    ) -> None:
        """Write the :data:`DEVICE_FIELDS` of a deployment's changed devices with one
        ``executemany``: the write lock is held for as short as it can be."""
        if changed:
            conn.execute(
                self._set_devices,
                [
                    {
                        "b_dep": dep_id,
                        "b_dev": d["device"],
                        **{k: d[k] for k in DEVICE_FIELDS},
                        "updated": now,
                    }
                    for d in changed
                ],
            )

    # --- reads and leases, each a transaction of its own --------------------------------------

    def active_ids(self, only: str | None = None) -> list[str]:
        """The active deployments (or ``only``, if active), oldest first."""
        q = sa.select(DEP.id).where(DEP.state.in_(ACTIVE)).order_by(DEP.created)
        with self.engine.begin() as conn:
            return [r[0] for r in conn.execute(q if only is None else q.where(DEP.id == only))]

    def all(self, *, active: bool = False) -> list[dict[str, Any]]:
        """Deployments (only the active ones with ``active``), newest first, each with its
        devices counted per state (``devices``)."""
        q = sa.select(deployments).order_by(DEP.created.desc())
        if active:
            q = q.where(DEP.state.in_(ACTIVE))
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
            counts: dict[str, dict[str, int]] = {}
            for dep, state, n in conn.execute(
                sa.select(DD.deployment, DD.state, sa.func.count()).group_by(
                    DD.deployment, DD.state
                )
            ):
                counts.setdefault(dep, {})[state] = int(n)
        for r in rows:
            r["devices"] = counts.get(r["id"], {})
        return rows

    def release(self, owner: str) -> None:
        """Give up ``owner``'s leases."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(deployments)
                .where(DEP.lease_owner == owner)
                .values(lease_owner=None, lease_until=0.0)
            )
