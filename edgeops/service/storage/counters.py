"""Command counters in storage (``command_counters``): the last counter each device was given,
so that every signed command carries a higher one than any before it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgeops.service.storage.schema import command_counters


class CounterRows:
    """Hands out command counters (:meth:`next`)."""

    def __init__(self, engine: Engine, insert: Callable[[sa.Table], Any]) -> None:
        self.engine = engine
        self._insert = insert

    def next(self, devices: Sequence[tuple[str, str]], now: float | None = None) -> list[int]:
        """A new counter for a command to each ``(fleet, device)``, in one transaction.

        Each is above every counter the device was given before (one atomic upsert per device,
        so processes sharing a PostgreSQL database never hand out the same one) and at least the
        time in microseconds: counters keep increasing across a database that was lost or
        replaced, as long as the clock does not go back."""
        now = time.time() if now is None else now
        floor = int(now * 1_000_000)
        c = command_counters.c
        out = []
        with self.engine.begin() as conn:
            for fleet, device in devices:
                stmt = self._insert(command_counters).values(
                    fleet=fleet, device=device, counter=floor, updated=now
                )
                bumped = sa.case((c.counter + 1 > floor, c.counter + 1), else_=floor)
                stmt = stmt.on_conflict_do_update(
                    index_elements=["fleet", "device"], set_={"counter": bumped, "updated": now}
                ).returning(c.counter)
                out.append(int(conn.execute(stmt).scalar_one()))
        return out
