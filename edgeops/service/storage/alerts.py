"""Alerts in storage: each feature's hysteresis state (``alert_state``, locked while an
evaluation updates it) and the alerts raised and cleared (``alerts``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.service.storage.schema import alert_state, alerts


@dataclass(frozen=True)
class AlertState:
    """One feature's alert state (``alert_state``) as read under lock."""

    key: str
    active: bool
    over: int
    under: int
    last_window: int


class AlertRows:
    """Alert states and alerts; the writes take the open connection of the evaluation that
    decides them, so that states, alerts and drift rows commit together."""

    def __init__(self, engine: Engine, insert: Callable[[sa.Table], Any]) -> None:
        self.engine = engine
        s = alert_state.c
        self._lock_states = (
            sa.select(s.key, s.active, s.over, s.under, s.last_window)
            .where(s.key.in_(sa.bindparam("keys", expanding=True)))
            .order_by(s.key)
            .with_for_update()
        )
        self._add_states = insert(alert_state).on_conflict_do_nothing(index_elements=["key"])
        self._set_states = sa.update(alert_state).where(s.key == sa.bindparam("b_key"))
        self._raise = sa.insert(alerts)
        self._clear = (
            sa.update(alerts)
            .where(alerts.c.key == sa.bindparam("b_key"), alerts.c.cleared.is_(None))
            .values(cleared=sa.bindparam("b_cleared"), cleared_reason=sa.bindparam("b_reason"))
        )

    def lock_states(
        self, conn: Connection, keys: Sequence[str], now: float
    ) -> dict[str, AlertState]:
        """The alert states of ``keys``, locked (``SELECT … FOR UPDATE``) until the transaction
        ends; missing ones are created first (inactive), so that a concurrent process waits on
        the same rows instead of inserting them twice."""
        rows = self._read_states(conn, keys)
        missing = sorted(set(keys) - rows.keys())
        if missing:
            conn.execute(
                self._add_states,
                [
                    {
                        "key": k,
                        "active": False,
                        "over": 0,
                        "under": 0,
                        "last_window": 0,
                        "updated": now,
                    }
                    for k in missing
                ],
            )
            rows |= self._read_states(conn, missing)
        return rows

    def _read_states(self, conn: Connection, keys: Sequence[str]) -> dict[str, AlertState]:
        return {
            r[0]: AlertState(r[0], bool(r[1]), int(r[2]), int(r[3]), int(r[4]))
            for r in conn.execute(self._lock_states, {"keys": list(keys)})
        }

    def save_states(self, conn: Connection, states: Sequence[dict[str, Any]]) -> None:
        """Update locked alert states: each dict has ``key`` and the columns to set."""
        if states:
            conn.execute(
                self._set_states,
                [{"b_key": s["key"], **{k: v for k, v in s.items() if k != "key"}} for s in states],
            )

    def add(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        """Raise alerts: insert their rows."""
        if rows:
            conn.execute(self._raise, list(rows))

    def clear(
        self, conn: Connection, keys: Sequence[str], now: float, reason: str | None = None
    ) -> None:
        if keys:
            conn.execute(
                self._clear,
                [{"b_key": k, "b_cleared": now, "b_reason": reason} for k in keys],
            )

    def close_other_versions(
        self, conn: Connection, fleet: str, device: str, name: str, version: str, now: float
    ) -> list[dict[str, Any]]:
        """Close the device's active alerts raised against another model or version than the
        one it now runs (reason: what it runs now), and reset their alert states, so that a
        device that goes back to that version starts afresh. The alerts closed."""
        a = alerts.c
        stale = sa.and_(
            a.cleared.is_(None),
            a.fleet == fleet,
            a.device == device,
            sa.or_(a.model_name != name, a.model_version != version),
        )
        rows = [dict(r) for r in conn.execute(sa.select(alerts).where(stale)).mappings()]
        if not rows:
            return []
        reason = f"the device no longer runs the model it was raised against (now {name} {version})"
        keys = sorted({r["key"] for r in rows})
        self.clear(conn, keys, now, reason)
        conn.execute(
            sa.update(alert_state)
            .where(alert_state.c.key.in_(keys))
            .values(active=False, over=0, under=0, updated=now)
        )
        return rows

    def close_fleet_alerts_of(
        self, conn: Connection, fleet: str, keep: set[tuple[str, str]], now: float, device: str
    ) -> list[dict[str, Any]]:
        """Close the active alerts of ``device`` (the fleet scope's) in ``fleet`` whose (model,
        version) is not in ``keep`` (the versions the fleet's devices ran in the span)."""
        a = alerts.c
        rows = [
            dict(r)
            for r in conn.execute(
                sa.select(alerts).where(a.cleared.is_(None), a.fleet == fleet, a.device == device)
            ).mappings()
            if (r["model_name"], r["model_version"]) not in keep
        ]
        if rows:
            keys = sorted({r["key"] for r in rows})
            self.clear(conn, keys, now, "no device of the fleet runs this version any more")
            conn.execute(
                sa.update(alert_state)
                .where(alert_state.c.key.in_(keys))
                .values(active=False, over=0, under=0, updated=now)
            )
        return rows

    # --- reads --------------------------------------------------------------------------------

    def active(self, fleet: str | None = None, device: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(alerts).where(alerts.c.cleared.is_(None))
        if fleet is not None:
            q = q.where(alerts.c.fleet == fleet)
        if device is not None:
            q = q.where(alerts.c.device == device)
        with self.engine.begin() as conn:
            return [dict(r) for r in conn.execute(q.order_by(alerts.c.raised)).mappings()]

    def all(self) -> list[dict[str, Any]]:
        with self.engine.begin() as conn:
            return [
                dict(r) for r in conn.execute(sa.select(alerts).order_by(alerts.c.id)).mappings()
            ]
