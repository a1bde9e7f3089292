"""Drift evaluations in storage (``drift``): one row per feature, check and scope of each
evaluation, written in the evaluation's transaction and read by the API, reports and the demo."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.service.storage.schema import drift


class DriftRows:
    """Writes and reads of ``drift``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._add = sa.insert(drift)

    def add(self, conn: Connection, records: Sequence[dict[str, Any]]) -> None:
        """Insert drift rows (one ``executemany``)."""
        if records:
            conn.execute(self._add, list(records))

    def rows(
        self,
        *,
        model: tuple[str, str | None] | None = None,
        since: float | None = None,
        fleet: str | None = None,
        device: str | None = None,
        latest: bool = True,
    ) -> list[dict[str, Any]]:
        """Drift evaluations; with ``latest`` only the newest per (scope, device, feature)."""
        q = sa.select(drift)
        if model is not None:
            q = q.where(drift.c.model_name == model[0])
            if model[1] is not None:
                q = q.where(drift.c.model_version == model[1])
        if since is not None:
            q = q.where(drift.c.evaluated >= since)
        if fleet is not None:
            q = q.where(drift.c.fleet == fleet)
        if device is not None:
            q = q.where(drift.c.device == device)
        q = q.order_by(drift.c.evaluated.desc(), drift.c.id.desc())
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        if not latest:
            return rows
        seen: set[tuple[Any, ...]] = set()
        out = []
        for r in rows:
            k = (
                r["scope"],
                r["fleet"],
                r["device"],
                r["model_name"],
                r["model_version"],
                r["reference"],
                r["feature"],
                r["kind"],
            )
            if k not in seen:
                seen.add(k)
                out.append(r)
        return out
