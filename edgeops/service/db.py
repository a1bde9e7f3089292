"""The service's storage: one SQLAlchemy Core schema for SQLite (default) and PostgreSQL.

Every device message is stored once: windows and events carry a unique ``(fleet, device, boot,
seq)`` and are inserted with ``ON CONFLICT DO NOTHING``, so a QoS 1 redelivery, or the same message
handled by two service processes, is counted as a duplicate and never stored twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops import wire
from edgeops.errors import UsageError

log = logging.getLogger(__name__)

md = sa.MetaData()

devices = sa.Table(
    "devices",
    md,
    sa.Column("fleet", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("online", sa.Boolean, nullable=False, default=False),
    sa.Column("boot", sa.String(128)),
    sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.String(64)),
    sa.Column("model_sha256", sa.String(64)),
    sa.Column("agent_version", sa.String(64)),
    sa.Column("labels", sa.JSON),
    sa.Column("first_seen", sa.Float, nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("status_sent", sa.Float),
)

_MESSAGE_KEY = ("fleet", "device", "boot", "seq")

windows = sa.Table(
    "windows",
    md,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("fleet", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("boot", sa.String(128), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("model_name", sa.String(128)),
    sa.Column("model_version", sa.String(64)),
    sa.Column("count", sa.BigInteger, nullable=False),
    sa.Column("errors", sa.BigInteger, nullable=False),
    sa.Column("bad_inputs", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint(*_MESSAGE_KEY, name="windows_once"),
    sa.Index("windows_by_device", "fleet", "device", "window_end"),
    sa.Index("windows_by_model", "model_name", "model_version", "window_end"),
)

events = sa.Table(
    "events",
    md,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("fleet", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("boot", sa.String(128), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("sent", sa.Float, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("level", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("command_id", sa.String(128)),
    sa.Column("data", sa.JSON),
    sa.UniqueConstraint(*_MESSAGE_KEY, name="events_once"),
)

models = sa.Table(
    "models",
    md,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("model_sha256", sa.String(64), nullable=False),
    sa.Column("manifest", sa.JSON, nullable=False),
    sa.Column("registered", sa.Float, nullable=False),
)

drift = sa.Table(
    "drift",
    md,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("evaluated", sa.Float, nullable=False),
    sa.Column("scope", sa.String(8), nullable=False),  # device | fleet
    sa.Column("fleet", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),  # "" for the fleet scope
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("feature", sa.String(256), nullable=False),
    sa.Column(
        "kind", sa.String(16), nullable=False
    ),  # input | output | concept | latency | dataset
    sa.Column("samples", sa.BigInteger, nullable=False),
    sa.Column("js", sa.Float),
    sa.Column("psi", sa.Float),
    sa.Column("wasserstein", sa.Float),
    sa.Column("linf", sa.Float),
    sa.Column("value", sa.Float),
    sa.Column("drifted", sa.Boolean),
    sa.Column("reason", sa.Text),
    sa.Index("drift_by_model", "model_name", "model_version", "evaluated"),
    sa.Index("drift_by_device", "fleet", "device", "evaluated"),
)

alert_state = sa.Table(
    "alert_state",
    md,
    sa.Column("key", sa.String(700), primary_key=True),
    sa.Column("active", sa.Boolean, nullable=False),
    sa.Column("over", sa.Integer, nullable=False),
    sa.Column("under", sa.Integer, nullable=False),
    sa.Column("last_window", sa.BigInteger, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
)

alerts = sa.Table(
    "alerts",
    md,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("key", sa.String(700), nullable=False),
    sa.Column("scope", sa.String(8), nullable=False),
    sa.Column("fleet", sa.String(64), nullable=False),
    sa.Column("device", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("feature", sa.String(256), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("raised", sa.Float, nullable=False),
    sa.Column("cleared", sa.Float),
    sa.Column("detail", sa.JSON),
    sa.Index("alerts_active", "cleared", "fleet", "device"),
)


def connect(url: str) -> Engine:
    """An engine for ``sqlite:///path`` (WAL, busy timeout) or ``postgresql://…`` (psycopg 3);
    the tables are created when missing."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ImportError) as e:
        raise UsageError(f"--db {url}: {e}") from None
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    elif engine.dialect.name != "postgresql":
        raise UsageError(f"--db {url}: use sqlite:///FILE or postgresql://…")
    try:
        md.create_all(engine)
    except sa.exc.OperationalError as e:
        raise UsageError(
            f"--db {url}: cannot open the database ({str(e).splitlines()[0]})"
        ) from None
    return engine


def _insert(conn: Connection, table: sa.Table) -> Any:
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


@dataclass(frozen=True)
class StoredWindow:
    id: int
    fleet: str
    device: str
    telemetry: wire.Telemetry


class Store:
    """Reads and writes of the service's tables; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    # --- device messages ----------------------------------------------------------------------

    def _touch(self, conn: Connection, fleet: str, device: str, now: float, **values: Any) -> None:
        row = {"fleet": fleet, "device": device, "first_seen": now, "last_seen": now, **values}
        stmt = _insert(conn, devices).values(**row)
        update = {k: stmt.excluded[k] for k in ("last_seen", *values)}
        conn.execute(stmt.on_conflict_do_update(index_elements=["fleet", "device"], set_=update))

    def add_window(self, fleet: str, t: wire.Telemetry, payload: bytes) -> int | None:
        """Store a telemetry window; its id, or None when it was already stored."""
        now = time.time()
        with self.begin() as conn:
            stmt = (
                _insert(conn, windows)
                .values(
                    fleet=fleet,
                    device=t.device,
                    boot=t.boot,
                    seq=t.seq,
                    received=now,
                    window_start=t.window_start,
                    window_end=t.window_end,
                    model_name=None if t.model is None else t.model.name,
                    model_version=None if t.model is None else t.model.version,
                    count=t.count,
                    errors=t.errors,
                    bad_inputs=t.bad_inputs,
                    payload=payload,
                )
                .on_conflict_do_nothing(index_elements=list(_MESSAGE_KEY))
                .returning(windows.c.id)
            )
            row = conn.execute(stmt).first()
            if row is None:
                return None
            extra = {}
            if t.model is not None:
                extra = {
                    "model_name": t.model.name,
                    "model_version": t.model.version,
                    "model_sha256": t.model.sha256,
                }
            self._touch(conn, fleet, t.device, now, **extra)
            return int(row[0])

    def add_event(self, fleet: str, e: wire.Event) -> bool:
        """Store an event; False when it was already stored."""
        now = time.time()
        with self.begin() as conn:
            stmt = (
                _insert(conn, events)
                .values(
                    fleet=fleet,
                    device=e.device,
                    boot=e.boot,
                    seq=e.seq,
                    sent=e.sent,
                    kind=e.kind,
                    level=e.level,
                    message=e.message,
                    command_id=e.command_id,
                    data=e.data,
                )
                .on_conflict_do_nothing(index_elements=list(_MESSAGE_KEY))
                .returning(events.c.id)
            )
            stored = conn.execute(stmt).first() is not None
            if stored:
                self._touch(conn, fleet, e.device, now)
            return stored

    def set_status(self, fleet: str, s: wire.Status) -> bool:
        """Record presence; an older status than the one stored is ignored (False)."""
        now = time.time()
        with self.begin() as conn:
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

    # --- models -------------------------------------------------------------------------------

    def add_model(self, manifest: dict[str, Any]) -> None:
        model_file = manifest["model"]["file"]
        with self.begin() as conn:
            stmt = _insert(conn, models).values(
                name=manifest["name"],
                version=manifest["version"],
                model_sha256=manifest["files"][model_file]["sha256"],
                manifest=manifest,
                registered=time.time(),
            )
            conn.execute(stmt.on_conflict_do_nothing(index_elements=["name", "version"]))

    def model(self, name: str, version: str) -> dict[str, Any] | None:
        with self.begin() as conn:
            row = conn.execute(
                sa.select(models.c.manifest).where(
                    models.c.name == name, models.c.version == version
                )
            ).first()
        return None if row is None else dict(row[0])

    def models(self) -> list[dict[str, Any]]:
        with self.begin() as conn:
            rows = conn.execute(
                sa.select(
                    models.c.name, models.c.version, models.c.model_sha256, models.c.registered
                ).order_by(models.c.name, models.c.registered)
            ).mappings()
            return [dict(r) for r in rows]

    # --- reads --------------------------------------------------------------------------------

    def recent_windows(
        self,
        *,
        fleet: str | None = None,
        device: str | None = None,
        model: tuple[str, str] | None = None,
        since: float | None = None,
        limit: int = 1000,
    ) -> list[StoredWindow]:
        """Newest first."""
        q = sa.select(windows.c.id, windows.c.fleet, windows.c.device, windows.c.payload)
        if fleet is not None:
            q = q.where(windows.c.fleet == fleet)
        if device is not None:
            q = q.where(windows.c.device == device)
        if model is not None:
            q = q.where(windows.c.model_name == model[0], windows.c.model_version == model[1])
        if since is not None:
            q = q.where(windows.c.window_end >= since)
        q = q.order_by(windows.c.window_end.desc(), windows.c.id.desc()).limit(limit)
        decoder = msgspec.json.Decoder(wire.Telemetry)
        with self.begin() as conn:
            rows = conn.execute(q).all()
        return [StoredWindow(int(r[0]), r[1], r[2], decoder.decode(r[3])) for r in rows]

    def devices(self, fleet: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(devices).order_by(devices.c.fleet, devices.c.device)
        if fleet is not None:
            q = q.where(devices.c.fleet == fleet)
        with self.begin() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def device(self, fleet: str, device: str) -> dict[str, Any] | None:
        rows = [d for d in self.devices(fleet) if d["device"] == device]
        return rows[0] if rows else None

    def find_device(self, device: str) -> list[dict[str, Any]]:
        with self.begin() as conn:
            q = sa.select(devices).where(devices.c.device == device)
            return [dict(r) for r in conn.execute(q).mappings()]

    def count_rows(self, table: sa.Table) -> int:
        with self.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def events_of(self, fleet: str, device: str, limit: int = 50) -> list[dict[str, Any]]:
        q = (
            sa.select(events)
            .where(events.c.fleet == fleet, events.c.device == device)
            .order_by(events.c.sent.desc())
            .limit(limit)
        )
        with self.begin() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def drift_rows(
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
        with self.begin() as conn:
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
                r["feature"],
                r["kind"],
            )
            if k not in seen:
                seen.add(k)
                out.append(r)
        return out

    def active_alerts(
        self, fleet: str | None = None, device: str | None = None
    ) -> list[dict[str, Any]]:
        q = sa.select(alerts).where(alerts.c.cleared.is_(None))
        if fleet is not None:
            q = q.where(alerts.c.fleet == fleet)
        if device is not None:
            q = q.where(alerts.c.device == device)
        with self.begin() as conn:
            return [dict(r) for r in conn.execute(q.order_by(alerts.c.raised)).mappings()]

    def all_alerts(self) -> list[dict[str, Any]]:
        with self.begin() as conn:
            return [
                dict(r) for r in conn.execute(sa.select(alerts).order_by(alerts.c.id)).mappings()
            ]


def dumps(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), default=str)
