"""The service's storage: one SQLAlchemy Core schema for SQLite (default) and PostgreSQL.

Every device message is stored once: windows and events carry a unique ``(fleet, device, boot,
seq)`` and are inserted with ``ON CONFLICT DO NOTHING``, so a QoS 1 redelivery, or the same message
handled by two service processes, is counted as a duplicate and never stored twice.

Messages arrive in batches (:meth:`Store.add_batch`): one transaction stores a batch's windows
and events with one multi-row insert each and upserts each device once. The statements of the
hot paths (batch inserts, span reads, alert state locks and updates) are built once per
:class:`Store` with bind parameters and executed with parameter lists.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from edgeops.core import wire
from edgeops.core.errors import UsageError, WireError
from edgeops.core.manifest import Manifest
from edgeops.drift.span import newest_span
from edgeops.service.logs import SafeLog

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
_MODEL_COLUMNS = ("model_name", "model_version", "model_sha256")

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
    # The window's latency histogram alone (wire.LatencyHistogram as JSON), so that charts over
    # a day of windows merge histograms without decoding whole payloads; None in rows stored
    # before it was added (read from the payload then).
    sa.Column("latency", sa.LargeBinary),
    sa.UniqueConstraint(*_MESSAGE_KEY, name="windows_once"),
    # Arrival order (the id) orders a device's windows: devices' clocks do not.
    sa.Index("windows_by_arrival", "fleet", "device", "model_name", "model_version", "id"),
    sa.Index("windows_by_received", "received"),
    sa.Index("windows_by_device_time", "fleet", "device", "received"),
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
    sa.Index("events_by_command", "command_id", "id"),
    sa.Index("events_by_device", "fleet", "device", "id"),
    sa.Index("events_by_sent", "sent"),
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
    # "training" (the bundle's baseline), "deploy" (the device's first windows on the version)
    # or "" (concept drift, latency): added after the first release, see _COLUMNS_ADDED
    sa.Column("reference", sa.String(8), nullable=False, server_default="training"),
    sa.Column("checks", sa.JSON),  # every check: test, value, threshold, floor, decides, over
    sa.Index("drift_by_model", "model_name", "model_version", "evaluated"),
    sa.Index("drift_by_device", "fleet", "device", "evaluated"),
    sa.Index("drift_by_time", "evaluated"),
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
    sa.Column("reference", sa.String(8), nullable=False, server_default="training"),
    sa.Column("cleared_reason", sa.Text),
    sa.Index("alerts_active", "cleared", "fleet", "device"),
)

device_references = sa.Table(
    "device_references",
    md,
    sa.Column("fleet", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("model_name", sa.String(128), primary_key=True),
    sa.Column("model_version", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(12), nullable=False),  # collecting | ready
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("window_ids", sa.JSON, nullable=False),  # while collecting: the windows taken
    sa.Column("last_window", sa.BigInteger, nullable=False),
    sa.Column("data", sa.JSON),  # when ready: edgeops.drift.Reference.to_dict()
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("ready", sa.Float),
)

_COLUMNS_ADDED = {
    "windows": ("latency",),
    "drift": ("reference", "checks"),
    "alerts": ("reference", "cleared_reason"),
}
"""Columns added since the first release: a database made before gets them at connect."""

dead_letters = sa.Table(
    "dead_letters",
    md,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("received", sa.Float, nullable=False),
    sa.Column("topic", sa.String(256), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("detail", sa.String(512), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("payload", sa.LargeBinary, nullable=False),  # its first dead_letter_bytes
    sa.Index("dead_letters_by_received", "received"),
)

bundles = sa.Table(
    "bundles",
    md,
    sa.Column("sha256", sa.String(64), primary_key=True),  # of the whole bundle file
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("registered", sa.Float, nullable=False),
    sa.UniqueConstraint("name", "version", name="bundles_once"),
)

deployments = sa.Table(
    "deployments",
    md,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("fleet", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("bundle_sha256", sa.String(64), nullable=False),
    sa.Column("target", sa.JSON, nullable=False),
    sa.Column("policy", sa.JSON, nullable=False),
    sa.Column("trigger", sa.String(256), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # running | aborting | completed | aborted
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("stage_sizes", sa.JSON, nullable=False),
    sa.Column("stage_started", sa.Float, nullable=False),
    sa.Column("bake_until", sa.Float),
    sa.Column("reason", sa.Text),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("finished", sa.Float),
    sa.Column("event_cursor", sa.BigInteger, nullable=False),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_until", sa.Float, nullable=False),
    sa.Column("history", sa.JSON, nullable=False),
)

deployment_devices = sa.Table(
    "deployment_devices",
    md,
    sa.Column("deployment", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("stage", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("from_version", sa.String(64)),
    sa.Column("from_sha256", sa.String(64)),
    sa.Column("sent", sa.Float),
    sa.Column("last_sent", sa.Float),
    sa.Column("decided", sa.Float),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("health", sa.JSON),
)

command_counters = sa.Table(
    "command_counters",
    md,
    sa.Column("fleet", sa.String(64), primary_key=True),
    sa.Column("device", sa.String(64), primary_key=True),
    sa.Column("counter", sa.BigInteger, nullable=False),  # the last one given to a command
    sa.Column("updated", sa.Float, nullable=False),
)

api_tokens = sa.Table(
    "api_tokens",
    md,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("role", sa.String(8), nullable=False),  # read | deploy | admin
    # sha256 of the token: the token itself is shown once when it is made and never stored
    sa.Column("digest", sa.String(64), nullable=False, unique=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("last_used", sa.Float),
)

service_secrets = sa.Table(
    "service_secrets",
    md,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
)


def connect(url: str) -> Engine:
    """An engine for ``sqlite:///path`` (WAL, busy timeout) or ``postgresql://…`` (psycopg 3);
    the tables are created when missing."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        engine = sa.create_engine(
            url,
            future=True,
            pool_pre_ping=True,
            # JSON columns (drift checks, alert details, references) through msgspec: several
            # times faster than the json module on the evaluation path, same text
            json_serializer=_json_text,
            json_deserializer=msgspec.json.decode,
        )
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
        _add_columns(engine)
        with engine.begin() as conn:  # indexes added since a database was made
            for table in md.sorted_tables:
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
    except sa.exc.OperationalError as e:
        raise UsageError(
            f"--db {url}: cannot open the database ({str(e).splitlines()[0]})"
        ) from None
    return engine


def _add_columns(engine: Engine) -> None:
    """``ALTER TABLE … ADD COLUMN`` for the columns of :data:`_COLUMNS_ADDED` a database lacks."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for name, columns in _COLUMNS_ADDED.items():
            have = {c["name"] for c in inspector.get_columns(name)}
            for column in columns:
                if column in have:
                    continue
                col = md.tables[name].c[column]
                kind = col.type.compile(dialect=engine.dialect)
                default = col.server_default
                extra = ""
                if default is not None:
                    text = getattr(default, "arg", "")
                    extra = f" NOT NULL DEFAULT '{text}'"
                conn.execute(sa.text(f'ALTER TABLE {name} ADD COLUMN "{column}" {kind}{extra}'))


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _insert_for(dialect: str) -> Callable[[sa.Table], Any]:
    """The dialect's ``INSERT`` construct, the one with ``ON CONFLICT``."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect == "postgresql" else sqlite.insert


@dataclass(frozen=True)
class StoredWindow:
    id: int
    """Arrival order: ids grow as windows are stored."""
    fleet: str
    device: str
    telemetry: wire.Telemetry
    received: float
    """The service's clock when it was stored."""


@dataclass(frozen=True)
class DeadLetter:
    """A refused message as the ``dead_letters`` table keeps it."""

    received: float
    topic: str
    reason: str
    detail: str
    payload: bytes
    """The whole payload; :meth:`row` keeps its first ``keep`` bytes."""

    def row(self, keep: int) -> dict[str, Any]:
        import hashlib

        return {
            "received": self.received,
            "topic": _clean(self.topic, 256),
            "reason": _clean(self.reason, 32),
            "detail": _clean(self.detail, 512),
            "size": len(self.payload),
            "sha256": hashlib.sha256(self.payload).hexdigest(),
            "payload": bytes(self.payload[:keep]),
        }


def _clean(text: str, limit: int) -> str:
    """``text`` as any column of ``limit`` characters takes it: no NUL, clipped."""
    text = text.replace("\x00", "\\0")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class NewWindow:
    """A decoded telemetry window on its way into :meth:`Store.add_batch`."""

    fleet: str
    telemetry: wire.Telemetry
    payload: bytes


def _window_row(w: NewWindow, received: float) -> dict[str, Any]:
    t = w.telemetry
    return {
        "fleet": w.fleet,
        "device": t.device,
        "boot": t.boot,
        "seq": t.seq,
        "received": received,
        "window_start": t.window_start,
        "window_end": t.window_end,
        "model_name": None if t.model is None else t.model.name,
        "model_version": None if t.model is None else t.model.version,
        "count": t.count,
        "errors": t.errors,
        "bad_inputs": t.bad_inputs,
        "payload": w.payload,
        "latency": msgspec.json.encode(t.latency),
    }


@dataclass(frozen=True)
class StoredBatch:
    """What :meth:`Store.add_batch` stored; the rest of the batch was already stored."""

    windows: list[StoredWindow]
    """The new windows, oldest id first."""
    events: int
    duplicates: int
    """Windows and events already stored, or repeated within the batch."""
    dead_letters: int = 0


@dataclass(frozen=True)
class AlertRow:
    """One feature's alert state (``alert_state``) as read under lock."""

    key: str
    active: bool
    over: int
    under: int
    last_window: int


class _Statements:
    """The statements of the hot paths, built once per store: SQLAlchemy caches their compiled
    form, and each execution only binds parameters (lists of them for ``executemany``)."""

    def __init__(self, dialect: str) -> None:
        insert = _insert_for(dialect)
        key = list(_MESSAGE_KEY)
        self.add_windows = (
            insert(windows)
            .on_conflict_do_nothing(index_elements=key)
            .returning(windows.c.id, *(windows.c[k] for k in _MESSAGE_KEY))
        )
        self.add_events = (
            insert(events)
            .on_conflict_do_nothing(index_elements=key)
            .returning(*(events.c[k] for k in _MESSAGE_KEY))
        )
        touch = insert(devices)
        # One statement for every device of a batch, rows in key order: two processes then lock
        # device rows in the same order. A row without a model keeps the stored one.
        self.touch = touch.on_conflict_do_update(
            index_elements=["fleet", "device"],
            set_={
                "last_seen": touch.excluded.last_seen,
                **{k: sa.func.coalesce(touch.excluded[k], devices.c[k]) for k in _MODEL_COLUMNS},
            },
        )
        w = windows.c
        self.span_counts = (
            sa.select(w.id, w["count"], w.received)
            .where(
                w.fleet == sa.bindparam("fleet"),
                w.device == sa.bindparam("device"),
                w.model_name == sa.bindparam("name"),
                w.model_version == sa.bindparam("version"),
                w.id <= sa.bindparam("upto"),
            )
            .order_by(w.id.desc())
            .limit(sa.bindparam("limit"))
        )
        self.payloads = sa.select(w.id, w.payload, w.received).where(
            w.id.in_(sa.bindparam("ids", expanding=True))
        )
        self.add_dead_letters = sa.insert(dead_letters)
        self.add_drift = sa.insert(drift)
        s = alert_state.c
        self.lock_states = (
            sa.select(s.key, s.active, s.over, s.under, s.last_window)
            .where(s.key.in_(sa.bindparam("keys", expanding=True)))
            .order_by(s.key)
            .with_for_update()
        )
        self.add_states = insert(alert_state).on_conflict_do_nothing(index_elements=["key"])
        self.set_states = sa.update(alert_state).where(s.key == sa.bindparam("b_key"))
        self.raise_alert = sa.insert(alerts)
        self.clear_alert = (
            sa.update(alerts)
            .where(alerts.c.key == sa.bindparam("b_key"), alerts.c.cleared.is_(None))
            .values(cleared=sa.bindparam("b_cleared"), cleared_reason=sa.bindparam("b_reason"))
        )


class Store:
    """Reads and writes of the service's tables; safe to share between threads."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = _insert_for(engine.dialect.name)
        self._sql = _Statements(engine.dialect.name)

    @contextmanager
    def begin(self) -> Iterator[Connection]:
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
        with self.begin() as conn:
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

    # --- device messages ----------------------------------------------------------------------

    def add_batch(
        self,
        new_windows: Sequence[NewWindow] = (),
        new_events: Sequence[tuple[str, wire.Event]] = (),
        statuses: Sequence[tuple[str, wire.Status]] = (),
        dead: Sequence[DeadLetter] = (),
        *,
        dead_letter_bytes: int = 16 * 1024,
        now: float | None = None,
    ) -> StoredBatch:
        """Store a batch of device messages in one transaction: windows and events with one
        multi-row ``INSERT … ON CONFLICT DO NOTHING`` each (the unique ``(fleet, device, boot,
        seq)`` key decides what is new), then each device touched once, then the statuses,
        then the dead letters (``now``: the receive time, default the clock)."""
        now = time.time() if now is None else now
        firsts: dict[tuple[Any, ...], NewWindow] = {}
        for w in new_windows:  # a key repeated within the batch is a duplicate too
            firsts.setdefault((w.fleet, w.telemetry.device, w.telemetry.boot, w.telemetry.seq), w)
        event_rows: dict[tuple[Any, ...], dict[str, Any]] = {}
        for fleet, e in new_events:
            event_rows.setdefault(
                (fleet, e.device, e.boot, e.seq),
                {
                    "fleet": fleet,
                    "device": e.device,
                    "boot": e.boot,
                    "seq": e.seq,
                    "sent": e.sent,
                    "kind": e.kind,
                    "level": e.level,
                    "message": e.message,
                    "command_id": e.command_id,
                    "data": e.data,
                },
            )
        with self.begin() as conn:
            stored: list[StoredWindow] = []
            if firsts:
                rows = [_window_row(w, now) for w in firsts.values()]
                for wid, *key in conn.execute(self._sql.add_windows, rows):
                    t = firsts[tuple(key)].telemetry
                    stored.append(StoredWindow(int(wid), key[0], t.device, t, now))
            stored.sort(key=lambda sw: sw.id)
            event_keys: list[tuple[Any, ...]] = []
            if event_rows:
                event_keys = [
                    tuple(r) for r in conn.execute(self._sql.add_events, list(event_rows.values()))
                ]
            touched: dict[tuple[str, str], dict[str, Any]] = {}
            for fleet, device, *_ in event_keys:
                touched.setdefault((fleet, device), {})
            ended: dict[tuple[str, str], float] = {}
            for sw in stored:
                m = sw.telemetry.model
                model = touched.setdefault((sw.fleet, sw.device), {})
                if m is not None:
                    model.update(model_name=m.name, model_version=m.version, model_sha256=m.sha256)
                    ended[(sw.fleet, sw.device)] = sw.telemetry.window_end
            # A window that closed before the device's last status (the window the previous
            # model served, flushed after a switch or a rollback) does not name its model now.
            for device_key, sent in self._status_sent(conn, list(ended)).items():
                if sent is not None and ended[device_key] < sent:
                    touched[device_key] = {}
            for fleet, st in statuses:  # locked here too, in the same order, before updating
                touched.setdefault((fleet, st.device), {})
            self._touch_many(conn, touched, now)
            for fleet, s in statuses:
                self._set_status(conn, fleet, s, now)
            if dead:
                conn.execute(self._sql.add_dead_letters, [d.row(dead_letter_bytes) for d in dead])
        duplicates = len(new_windows) - len(stored) + len(new_events) - len(event_keys)
        return StoredBatch(stored, len(event_keys), duplicates, len(dead))

    def known_devices(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which ``(fleet, device)`` of ``keys`` the devices table holds."""
        found: set[tuple[str, str]] = set()
        for i in range(0, len(keys), 500):
            part = list(keys[i : i + 500])
            q = sa.select(devices.c.fleet, devices.c.device).where(
                sa.tuple_(devices.c.fleet, devices.c.device).in_(part)
            )
            with self.begin() as conn:
                found.update((f, d) for f, d in conn.execute(q))
        return found

    def _status_sent(
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

    def _touch_many(
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
                **dict.fromkeys(_MODEL_COLUMNS),
                **model,
            }
            for (fleet, device), model in sorted(touched.items())
        ]
        if rows:
            conn.execute(self._sql.touch, rows)

    def _touch(self, conn: Connection, fleet: str, device: str, now: float, **values: Any) -> None:
        row = {"fleet": fleet, "device": device, "first_seen": now, "last_seen": now, **values}
        stmt = self._insert(devices).values(**row)
        update = {k: stmt.excluded[k] for k in ("last_seen", *values)}
        conn.execute(stmt.on_conflict_do_update(index_elements=["fleet", "device"], set_=update))

    def add_window(self, fleet: str, t: wire.Telemetry, payload: bytes) -> int | None:
        """Store a telemetry window; its id, or None when it was already stored."""
        stored = self.add_batch([NewWindow(fleet, t, payload)])
        return stored.windows[0].id if stored.windows else None

    def add_event(self, fleet: str, e: wire.Event) -> bool:
        """Store an event; False when it was already stored."""
        return self.add_batch(new_events=[(fleet, e)]).events == 1

    def set_status(self, fleet: str, s: wire.Status) -> bool:
        """Record presence; an older status than the one stored is ignored (False)."""
        with self.begin() as conn:
            return self._set_status(conn, fleet, s, time.time())

    def _set_status(self, conn: Connection, fleet: str, s: wire.Status, now: float) -> bool:
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

    # --- drift --------------------------------------------------------------------------------

    def device_span(
        self,
        newest: StoredWindow,
        *,
        since: float,
        min_samples: int,
        limit: int,
        known: Mapping[int, StoredWindow],
    ) -> list[StoredWindow]:
        """The device's windows of ``newest``'s model up to ``newest``, in arrival order (by
        id), newest first, as many as reach ``min_samples`` (at most ``limit``, none received
        before ``since``). Counts come from the ``count`` column; payloads are read and decoded
        only for the windows of the span that are not in ``known``; one that no longer decodes
        is left out (and logged)."""
        t = newest.telemetry
        assert t.model is not None
        params = {
            "fleet": newest.fleet,
            "device": newest.device,
            "name": t.model.name,
            "version": t.model.version,
            "upto": newest.id,
            "limit": limit,
        }
        with self.begin() as conn:
            recent = itertools.takewhile(
                lambda row: row[2] >= since, conn.execute(self._sql.span_counts, params)
            )
            ids = [
                int(wid)
                for wid, _, _ in newest_span(
                    recent, lambda row: int(row[1]), min_samples=min_samples, limit=limit
                )
            ]
            missing = [i for i in ids if i not in known]
            rows = conn.execute(self._sql.payloads, {"ids": missing}).all() if missing else []
        found = dict(known)
        for wid, payload, received in rows:
            tele = decode_stored(payload, wid)
            if tele is not None:
                found[wid] = StoredWindow(wid, newest.fleet, newest.device, tele, received)
        return [found[i] for i in ids if i in found]

    def add_drift(self, conn: Connection, records: Sequence[dict[str, Any]]) -> None:
        """Insert drift rows (one ``executemany``)."""
        if records:
            conn.execute(self._sql.add_drift, list(records))

    def lock_alert_states(
        self, conn: Connection, keys: Sequence[str], now: float
    ) -> dict[str, AlertRow]:
        """The alert states of ``keys``, locked (``SELECT … FOR UPDATE``) until the transaction
        ends; missing ones are created first (inactive), so that a concurrent process waits on
        the same rows instead of inserting them twice."""
        rows = self._read_states(conn, keys)
        missing = sorted(set(keys) - rows.keys())
        if missing:
            conn.execute(
                self._sql.add_states,
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

    def _read_states(self, conn: Connection, keys: Sequence[str]) -> dict[str, AlertRow]:
        return {
            r[0]: AlertRow(r[0], bool(r[1]), int(r[2]), int(r[3]), int(r[4]))
            for r in conn.execute(self._sql.lock_states, {"keys": list(keys)})
        }

    def save_alert_states(self, conn: Connection, states: Sequence[dict[str, Any]]) -> None:
        """Update locked alert states: each dict has ``key`` and the columns to set."""
        if states:
            conn.execute(
                self._sql.set_states,
                [{"b_key": s["key"], **{k: v for k, v in s.items() if k != "key"}} for s in states],
            )

    def raise_alerts(self, conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            conn.execute(self._sql.raise_alert, list(rows))

    def clear_alerts(
        self, conn: Connection, keys: Sequence[str], now: float, reason: str | None = None
    ) -> None:
        if keys:
            conn.execute(
                self._sql.clear_alert,
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
        self.clear_alerts(conn, keys, now, reason)
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
            self.clear_alerts(conn, keys, now, "no device of the fleet runs this version any more")
            conn.execute(
                sa.update(alert_state)
                .where(alert_state.c.key.in_(keys))
                .values(active=False, over=0, under=0, updated=now)
            )
        return rows

    # --- per-device references ----------------------------------------------------------------

    def lock_reference(
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

    def save_reference(self, conn: Connection, row: Mapping[str, Any]) -> None:
        r = device_references.c
        keys = ("fleet", "device", "model_name", "model_version")
        conn.execute(
            sa.update(device_references)
            .where(*(r[k] == row[k] for k in keys))
            .values({k: v for k, v in row.items() if k not in keys})
        )

    def references(
        self, *, fleet: str | None = None, device: str | None = None
    ) -> list[dict[str, Any]]:
        """Per-device references: state, rows, windows, when started and ready (no data)."""
        r = device_references.c
        q = sa.select(
            r.fleet, r.device, r.model_name, r.model_version, r.state, r.rows, r.started, r.ready
        )
        if fleet is not None:
            q = q.where(r.fleet == fleet)
        if device is not None:
            q = q.where(r.device == device)
        with self.begin() as conn:
            return [dict(x) for x in conn.execute(q.order_by(r.started)).mappings()]

    def windows_by_id(self, fleet: str, device: str, ids: Sequence[int]) -> list[StoredWindow]:
        """Stored windows of one device by id (oldest first); undecodable ones left out."""
        if not ids:
            return []
        with self.begin() as conn:
            rows = conn.execute(self._sql.payloads, {"ids": list(ids)}).all()
        out = []
        for wid, payload, received in sorted(rows):
            tele = decode_stored(payload, wid)
            if tele is not None:
                out.append(StoredWindow(wid, fleet, device, tele, received))
        return out

    # --- commands -----------------------------------------------------------------------------

    def next_counters(
        self, devices: Sequence[tuple[str, str]], now: float | None = None
    ) -> list[int]:
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

    # --- models -------------------------------------------------------------------------------

    def add_model(self, manifest: dict[str, Any], info: Manifest) -> None:
        """Register a verified bundle's manifest (as signed, and typed)."""
        with self.begin() as conn:
            stmt = self._insert(models).values(
                name=info.name,
                version=info.version,
                model_sha256=info.model_sha256,
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

    def resolve_model(self, text: str) -> tuple[str, str]:
        """A registered model named ``NAME:VERSION`` or ``NAME-VERSION``."""
        candidates = [tuple(text.split(":", 1))] if ":" in text else []
        candidates += [(text[:i], text[i + 1 :]) for i, c in enumerate(text) if c == "-"]
        for name, version in candidates:
            if self.model(name, version) is not None:
                return name, version
        raise UsageError(f"no registered bundle {text!r} (give NAME-VERSION or NAME:VERSION)")

    def models(self) -> list[dict[str, Any]]:
        """Registered models, oldest first per name, each with its lineage (parent, training
        run, conversion) and how many devices of each fleet run it."""
        with self.begin() as conn:
            rows = [
                dict(r)
                for r in conn.execute(
                    sa.select(
                        models.c.name,
                        models.c.version,
                        models.c.model_sha256,
                        models.c.registered,
                        models.c.manifest,
                        bundles.c.sha256.label("bundle_sha256"),
                        bundles.c.size.label("bundle_size"),
                    )
                    .select_from(
                        models.outerjoin(
                            bundles,
                            (bundles.c.name == models.c.name)
                            & (bundles.c.version == models.c.version),
                        )
                    )
                    .order_by(models.c.name, models.c.registered)
                ).mappings()
            ]
            running: dict[tuple[str, str], dict[str, int]] = {}
            q = sa.select(
                devices.c.model_name, devices.c.model_version, devices.c.fleet, sa.func.count()
            ).group_by(devices.c.model_name, devices.c.model_version, devices.c.fleet)
            for name, version, fleet, n in conn.execute(q):
                running.setdefault((name, version), {})[fleet] = int(n)
        for r in rows:
            m = r.pop("manifest")
            model = m.get("model") or {}
            r["lineage"] = {
                "parent": m.get("parent"),
                "run": (m.get("training") or {}).get("run"),
                "created": m.get("created"),
                "format": model.get("format"),
                "mode": model.get("mode"),
                "accuracy": ((m.get("evaluation") or {}).get("test") or {}).get("accuracy"),
            }
            r["devices"] = running.get((r["name"], r["version"]), {})
        return rows

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
        """Newest first (arrival order), ``since`` on the service's clock; windows stored
        before today's checks that no longer decode are left out (and logged)."""
        q = sa.select(
            windows.c.id, windows.c.fleet, windows.c.device, windows.c.payload, windows.c.received
        )
        if fleet is not None:
            q = q.where(windows.c.fleet == fleet)
        if device is not None:
            q = q.where(windows.c.device == device)
        if model is not None:
            q = q.where(windows.c.model_name == model[0], windows.c.model_version == model[1])
        if since is not None:
            q = q.where(windows.c.received >= since)
        q = q.order_by(windows.c.id.desc()).limit(limit)
        with self.begin() as conn:
            rows = conn.execute(q).all()
        out = []
        for wid, fleet_, device_, payload, received in rows:
            tele = decode_stored(payload, wid)
            if tele is not None:
                out.append(StoredWindow(int(wid), fleet_, device_, tele, received))
        return out

    def devices(self, fleet: str | None = None) -> list[dict[str, Any]]:
        q = sa.select(devices).order_by(devices.c.fleet, devices.c.device)
        if fleet is not None:
            q = q.where(devices.c.fleet == fleet)
        with self.begin() as conn:  # tuples, not row mappings: every dashboard poll reads these
            result = conn.execute(q)
            keys = list(result.keys())
            return [dict(zip(keys, r, strict=True)) for r in result.all()]

    def device(self, fleet: str, device: str) -> dict[str, Any] | None:
        q = sa.select(devices).where(devices.c.fleet == fleet, devices.c.device == device)
        with self.begin() as conn:
            row = conn.execute(q).mappings().first()
        return None if row is None else dict(row)

    def find_device(self, device: str) -> list[dict[str, Any]]:
        with self.begin() as conn:
            q = sa.select(devices).where(devices.c.device == device)
            return [dict(r) for r in conn.execute(q).mappings()]

    def count_rows(self, table: sa.Table) -> int:
        with self.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())

    def events_of(self, fleet: str, device: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's newest events, in arrival order."""
        q = (
            sa.select(events)
            .where(events.c.fleet == fleet, events.c.device == device)
            .order_by(events.c.id.desc())
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
                r["reference"],
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

    # --- dead letters and retention ----------------------------------------------------------

    def dead_letters(self, *, reason: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters (payload prefix as text, undecodable bytes escaped)."""
        q = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if reason is not None:
            q = q.where(dead_letters.c.reason == reason)
        with self.begin() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["payload"] = bytes(r["payload"]).decode("utf-8", "backslashreplace")
        return rows

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
        with self.begin() as conn:  # the newest dead_letter_rows only
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
            with self.begin() as conn:
                n = conn.execute(sa.delete(table).where(table.c.id.in_(ids))).rowcount
            total += n
            if n < chunk:
                return total


_unreadable = SafeLog(log)


def decode_stored(payload: bytes, row_id: int | None = None) -> wire.Telemetry | None:
    """A stored window's telemetry, or None (logged) when it no longer decodes: a row stored
    before the wire's bounds tightened must not make a read fail."""
    try:
        return wire.decode(payload, wire.Telemetry)
    except WireError as e:
        _unreadable.warning("unreadable", "stored window %s is left out: %s", row_id, e)
        return None


def dumps(rows: Sequence[dict[str, Any]]) -> str:
    return json.dumps(list(rows), default=str)
