"""Per-device references in storage (``device_references``): the windows a device's first
days on a model version are collected from, then the reference made of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.service.storage.schema import device_references


class ReferenceRows:
    """Reads and writes of ``device_references``; :meth:`lock` and :meth:`save` take the open
    connection of the evaluation that collects or uses the reference."""

    def __init__(self, engine: Engine, insert: Callable[[sa.Table], Any]) -> None:
        self.engine = engine
        self._insert = insert

    def lock(
        self, conn: Connection, fleet: str, device: str, name: str, version: str, now: float
    ) -> dict[str, Any]:
        """The device's reference row of (name, version), locked until the transaction ends;
        created (collecting, empty) when missing."""
        key = {"fleet": fleet, "device": device, "model_name": name, "model_version": version}
        r = device_references.c
        where = sa.and_(*(r[k] == v for k, v in key.items()))
        found = (
            conn.execute(sa.select(device_references).where(where).with_for_update())
            .mappings()
            .first()
        )
        if found is None:
            conn.execute(
                self._insert(device_references)
                .values(
                    **key,
                    state="collecting",
                    rows=0,
                    window_ids=[],
                    last_window=0,
                    started=now,
                )
                .on_conflict_do_nothing(index_elements=list(key))
            )
            found = (
                conn.execute(sa.select(device_references).where(where).with_for_update())
                .mappings()
                .first()
            )
        assert found is not None
        return dict(found)

    def save(self, conn: Connection, row: Mapping[str, Any]) -> None:
        r = device_references.c
        keys = ("fleet", "device", "model_name", "model_version")
        conn.execute(
            sa.update(device_references)
            .where(*(r[k] == row[k] for k in keys))
            .values({k: v for k, v in row.items() if k not in keys})
        )

    def all(self, *, fleet: str | None = None, device: str | None = None) -> list[dict[str, Any]]:
        """Per-device references: state, rows, windows, when started and ready (no data)."""
        r = device_references.c
        q = sa.select(
            r.fleet, r.device, r.model_name, r.model_version, r.state, r.rows, r.started, r.ready
        )
        if fleet is not None:
            q = q.where(r.fleet == fleet)
        if device is not None:
            q = q.where(r.device == device)
        with self.engine.begin() as conn:
            return [dict(x) for x in conn.execute(q.order_by(r.started)).mappings()]
