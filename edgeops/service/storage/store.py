"""The service's storage: one :class:`Store` per database, made of one part per concern.

============================  =========================================================
``store.telemetry``           device messages: windows, events, statuses, dead letters
``store.devices``             the devices table
``store.drift``               drift evaluations
``store.alerts``              alert states and alerts
``store.references``          per-device references
``store.models``              registered models and their bundles
``store.deployments``         deployments and their devices
``store.counters``            command counters
``store.tokens``              the REST API's tokens
``store.dashboard``           the dashboard's and ``/metrics``' reads
============================  =========================================================

The store itself opens transactions (:meth:`Store.begin`) for callers whose work spans several
parts' writes (an evaluation, a rollout step): the parts' methods that write in such a
transaction take its open connection. It also keeps the service's shared secrets and deletes
what the retention no longer keeps (:meth:`Store.purge`). Tables and :func:`connect` are in
:mod:`~edgeops.service.storage.schema`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.service.storage.alerts import AlertRows
from edgeops.service.storage.counters import CounterRows
from edgeops.service.storage.dashboard import DashboardReads
from edgeops.service.storage.deployments import DeploymentRows
from edgeops.service.storage.devices import DeviceRows
from edgeops.service.storage.drift import DriftRows
from edgeops.service.storage.models import ModelRows
from edgeops.service.storage.references import ReferenceRows
from edgeops.service.storage.schema import (
    alerts,
    dead_letters,
    drift,
    events,
    insert_for,
    service_secrets,
    windows,
)
from edgeops.service.storage.telemetry import TelemetryRows
from edgeops.service.storage.tokens import TokenRows


class Store:
    """Reads and writes of the service's tables; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = insert = insert_for(engine.dialect.name)
        self.devices = DeviceRows(engine, insert)
        self.telemetry = TelemetryRows(engine, insert, self.devices)
        self.drift = DriftRows(engine)
        self.alerts = AlertRows(engine, insert)
        self.references = ReferenceRows(engine, insert)
        self.models = ModelRows(engine, insert)
        self.deployments = DeploymentRows(engine)
        self.counters = CounterRows(engine, insert)
        self.tokens = TokenRows(engine)
        self.dashboard = DashboardReads(engine)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction: committed when the block ends, rolled back when it raises."""
        with self.engine.begin() as conn:
            yield conn

    def answers(self) -> bool:
        """Whether the database answers a trivial query now."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:
            return False

    def secret(self, name: str, size: int = 32) -> bytes:
        """The service's secret ``name``: random bytes made by the first process that asks and
        shared by every process on this database (``service_secrets``)."""
        import secrets

        q = sa.select(service_secrets.c.value).where(service_secrets.c.name == name)
        with self.engine.begin() as conn:
            row = conn.execute(q).first()
            if row is None:
                conn.execute(
                    self._insert(service_secrets)
                    .values(name=name, value=secrets.token_bytes(size), created=time.time())
                    .on_conflict_do_nothing(index_elements=["name"])
                )
                row = conn.execute(q).first()
        assert row is not None
        return bytes(row[0])

    def count_rows(self, table: sa.Table) -> int:
        """How many rows ``table`` holds."""
        with self.engine.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    # --- retention --------------------------------------------------------------------------

    def purge(self, retention: Any, now: float | None = None, chunk: int = 5000) -> dict[str, int]:
        """Delete what ``retention`` (:class:`~edgeops.service.config.Retention`) no longer
        keeps, in chunks of ``chunk`` rows per transaction; the rows deleted per table."""
        now = time.time() if now is None else now
        day = 86400.0
        plans: list[tuple[str, sa.Table, Any]] = [
            ("windows", windows, windows.c.received < now - retention.windows * day),
            ("events", events, events.c.sent < now - retention.events * day),
            ("drift", drift, drift.c.evaluated < now - retention.drift * day),
            ("alerts", alerts, alerts.c.cleared < now - retention.alerts * day),
            (
                "dead_letters",
                dead_letters,
                dead_letters.c.received < now - retention.dead_letters * day,
            ),
        ]
        deleted: dict[str, int] = {}
        for name, table, older in plans:
            deleted[name] = self._delete_chunks(table, older, chunk)
        with self.engine.begin() as conn:  # the newest dead_letter_rows only
            keep_from = conn.execute(
                sa.select(dead_letters.c.id)
                .order_by(dead_letters.c.id.desc())
                .offset(retention.dead_letter_rows - 1)
                .limit(1)
            ).scalar()
        if keep_from is not None:
            deleted["dead_letters"] += self._delete_chunks(
                dead_letters, dead_letters.c.id < keep_from, chunk
            )
        return deleted

    def _delete_chunks(self, table: sa.Table, where: Any, chunk: int) -> int:
        total = 0
        while True:
            ids = sa.select(table.c.id).where(where).limit(chunk).scalar_subquery()
            with self.engine.begin() as conn:
                n = conn.execute(sa.delete(table).where(table.c.id.in_(ids))).rowcount
            total += n
            if n < chunk:
                return total
