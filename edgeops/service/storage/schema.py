"""The service's tables: one SQLAlchemy Core schema for SQLite (default) and PostgreSQL, how to
connect to it, and the columns added since the first release (added at connect).

Every device message is stored once: windows and events carry a unique ``(fleet, device, boot,
seq)`` (:data:`MESSAGE_KEY`) and are inserted with ``ON CONFLICT DO NOTHING``, so a QoS 1
redelivery, or the same message handled by two service processes, is counted as a duplicate and
never stored twice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgeops.core.errors import UsageError

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

MESSAGE_KEY = ("fleet", "device", "boot", "seq")
"""What makes a window or an event unique: a message is stored once."""
MODEL_COLUMNS = ("model_name", "model_version", "model_sha256")
"""The columns of ``devices`` that name the model a device runs."""

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
    sa.UniqueConstraint(*MESSAGE_KEY, name="windows_once"),
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
    sa.UniqueConstraint(*MESSAGE_KEY, name="events_once"),
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
    # or "" (concept drift, latency): added after the first release, see COLUMNS_ADDED
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

COLUMNS_ADDED = {
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
    """``ALTER TABLE … ADD COLUMN`` for the columns of :data:`COLUMNS_ADDED` a database lacks."""
    inspector = sa.inspect(engine)
    with engine.begin() as conn:
        for name, columns in COLUMNS_ADDED.items():
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


def insert_for(dialect: str) -> Callable[[sa.Table], Any]:
    """The dialect's ``INSERT`` construct, the one with ``ON CONFLICT``."""
    from sqlalchemy.dialects import postgresql, sqlite

    return postgresql.insert if dialect == "postgresql" else sqlite.insert
