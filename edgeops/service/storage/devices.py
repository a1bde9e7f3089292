"""The ``devices`` table: one row per device of a fleet, upserted by every batch of its messages
(presence, the model it runs, when it was last seen) and read by the API, the dashboard and
deployments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.core import wire
from edgeops.service.storage.schema import MODEL_COLUMNS, devices


class DeviceRows:
    """Reads and writes of ``devices``; the writes take the open connection of the batch that
    stores the devices' messages."""

    def __init__(self, engine: Engine, insert: Callable[[sa.Table], Any]) -> None:
        self.engine = engine
        self._insert = insert
        touch = insert(devices)
        # One statement for every device of a batch, rows in key order: two processes then lock
        # device rows in the same order. A row without a model keeps the stored one.
        self._touch_rows = touch.on_conflict_do_update(
            index_elements=["fleet", "device"],
            set_={
                "last_seen": touch.excluded.last_seen,
                **{k: sa.func.coalesce(touch.excluded[k], devices.c[k]) for k in MODEL_COLUMNS},
            },
        )

    # --- writes, in the batch's transaction ---------------------------------------------------

    def status_sent(
        self, conn: Connection, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], float | None]:
        """When each device's last stored status was sent (its own clock)."""
        found: dict[tuple[str, str], float | None] = {}
        c = devices.c
        for i in range(0, len(keys), 500):
            q = sa.select(c.fleet, c.device, c.status_sent).where(
                sa.tuple_(c.fleet, c.device).in_(list(keys[i : i + 500]))
            )
            found.update(((f, d), sent) for f, d, sent in conn.execute(q))
        return found

    def touch_many(
        self, conn: Connection, touched: dict[tuple[str, str], dict[str, Any]], now: float
    ) -> None:
        """Upsert each device once, in key order, with one statement (two processes lock
        device rows in one order, so they never deadlock)."""
        rows = [
            {
                "fleet": fleet,
                "device": device,
                "first_seen": now,
                "last_seen": now,
                **dict.fromkeys(MODEL_COLUMNS),
                **model,
            }
            for (fleet, device), model in sorted(touched.items())
        ]
        if rows:
            conn.execute(self._touch_rows, rows)

    def set_status(self, conn: Connection, fleet: str, s: wire.Status, now: float) -> bool:
        """Record presence; an older status than the one stored is ignored (False)."""
        current = conn.execute(
            sa.select(devices.c.status_sent).where(
                devices.c.fleet == fleet, devices.c.device == s.device
            )
        ).first()
        if current is not None and current[0] is not None and current[0] > s.sent:
            return False
        values: dict[str, Any] = {
            "online": s.online,
            "boot": s.boot,
            "agent_version": s.agent_version,
            "labels": dict(s.labels),
            "status_sent": s.sent,
        }
        if s.model is not None:
            values.update(
                model_name=s.model.name,
                model_version=s.model.version,
                model_sha256=s.model.sha256,
            )
        self._touch(conn, fleet, s.device, now, **values)
        return True

    def _touch(self, conn: Connection, fleet: str, device: str, now: float, **values: Any) -> None:
        row = {"fleet": fleet, "device": device, "first_seen": now, "last_seen": now, **values}
        stmt = self._insert(devices).values(**row)
        update = {k: stmt.excluded[k] for k in ("last_seen", *values)}
        conn.execute(stmt.on_conflict_do_update(index_elements=["fleet", "device"], set_=update))

    # --- reads --------------------------------------------------------------------------------

    def known(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which ``(fleet, device)`` of ``keys`` the devices table holds."""
        found: set[tuple[str, str]] = set()
        for i in range(0, len(keys), 500):
            part = list(keys[i : i + 500])
            q = sa.select(devices.c.fleet, devices.c.device).where(
                sa.tuple_(devices.c.fleet, devices.c.device).in_(part)
            )
            with self.engine.begin() as conn:
                found.update((f, d) for f, d in conn.execute(q))
        return found

    def all(self, fleet: str | None = None) -> list[dict[str, Any]]:
        """Every device (of ``fleet``), by fleet and name."""
        q = sa.select(devices).order_by(devices.c.fleet, devices.c.device)
        if fleet is not None:
            q = q.where(devices.c.fleet == fleet)
        # tuples, not row mappings: every dashboard poll reads these
        with self.engine.begin() as conn:
            result = conn.execute(q)
            keys = list(result.keys())
            return [dict(zip(keys, r, strict=True)) for r in result.all()]

    def get(self, fleet: str, device: str) -> dict[str, Any] | None:
        q = sa.select(devices).where(devices.c.fleet == fleet, devices.c.device == device)
        with self.engine.begin() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else dict(row)

    def find(self, device: str) -> list[dict[str, Any]]:
        """The devices named ``device``, in any fleet."""
        with self.engine.begin() as conn:
            q = sa.select(devices).where(devices.c.device == device)
            return [dict(r) for r in conn.execute(q).mappings()]
