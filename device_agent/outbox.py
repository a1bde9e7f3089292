"""The device's disk-backed outbox: messages wait here until the broker has acknowledged them.

paho-mqtt keeps its offline queue in memory only, so the agent puts every telemetry window and event
here first, publishes what :meth:`Outbox.pending` returns, and calls :meth:`Outbox.ack` when the
broker acknowledged the message (PUBACK for QoS 1).

The contract is at-least-once:

- once :meth:`Outbox.put` returns, the row is on disk (SQLite WAL with ``synchronous=FULL``) and
  survives a kill of the process or a power cut;
- a row is deleted only by :meth:`Outbox.ack`, so after a crash between publish and ack it is sent
  again. Consumers drop the duplicates by (device, boot, seq), which the payload carries;
- the outbox is bounded by a message count and by payload bytes. When a put would exceed either
  bound the oldest rows are dropped first, and the number dropped is added to a counter that is
  stored in the database and reported in telemetry. Acking a row that was dropped returns False.

One process owns the file: the pending count and bytes are kept in memory and loaded on open. One
:class:`Outbox` may be shared by threads (HTTP request threads, a timer, paho's network thread); a
single lock serialises its calls. A file that is not a database is moved aside to
``<name>.corrupt-<time>`` and a fresh outbox is started (:attr:`Outbox.recovered_from_corruption`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from edgeops.core.errors import OutputError, first_line

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so a stale ack cannot hit a new row
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
"""
_CORRUPTION_CODES = (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT)


@dataclass(frozen=True)
class OutboxItem:
    """One stored message. ``created`` is unix time; ``attempts`` counts publishes so far."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float
    attempts: int


@dataclass(frozen=True)
class OutboxStats:
    """Rows waiting for an ack, their payload bytes, and rows dropped (ever) because it was full."""

    pending: int
    pending_bytes: int
    dropped: int


class Outbox:
    """A bounded SQLite queue of MQTT messages, deleted only on ack. Use as a context manager."""

    def __init__(
        self, path: Path, *, max_messages: int = 10_000, max_bytes: int = 50 * 2**20
    ) -> None:
        if max_messages < 1 or max_bytes < 1:
            raise ValueError("max_messages and max_bytes must be positive")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.recovered_from_corruption = False
        """True when the file was not a database and was moved to :attr:`corrupt_path`."""
        self.corrupt_path: Path | None = None
        self._lock = threading.Lock()
        self._count = 0
        self._bytes = 0
        self._dropped = 0
        self._dropping = False
        self._conn = self._open()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database; calling it again does nothing."""
        with self._lock:
            self._conn.close()

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Store a message durably and return its id, dropping the oldest rows if it is full."""
        size = len(payload)
        if size > self.max_bytes:
            raise ValueError(f"a {size}-byte payload exceeds the outbox's {self.max_bytes} bytes")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        with self._lock:
            dropped, dropped_bytes, row = self._put(topic, payload, qos, retain)
            self._count += 1 - dropped
            self._bytes += len(payload) - dropped_bytes
            self._dropped += dropped
            warn = dropped > 0 and not self._dropping  # once per spell of being full
            self._dropping, total = dropped > 0, self._dropped
        if warn:
            log.warning("outbox full: dropping the oldest messages (%d dropped in all)", total)
        return row

    def _put(self, topic: str, payload: bytes, qos: int, retain: bool) -> tuple[int, int, int]:
        """Insert one row, first deleting the oldest rows it would not fit beside."""
        size = len(payload)
        with self._transaction() as db:
            over_count = self._count + 1 - self.max_messages
            over_bytes = self._bytes + size - self.max_bytes
            dropped = dropped_bytes = 0
            if over_count > 0 or over_bytes > 0:
                last = 0
                for row_id, length in db.execute(
                    "SELECT id, length(payload) FROM outbox ORDER BY id"
                ):
                    if dropped >= over_count and dropped_bytes >= over_bytes:
                        break
                    last, dropped, dropped_bytes = row_id, dropped + 1, dropped_bytes + length
                db.execute("DELETE FROM outbox WHERE id <= ?", (last,))
                db.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped,))
            cur = db.execute(
                "INSERT INTO outbox (topic, payload, qos, retain, created) VALUES (?, ?, ?, ?, ?)",
                (topic, bytes(payload), qos, int(retain), time.time()),
            )
        assert cur.lastrowid is not None
        return dropped, dropped_bytes, cur.lastrowid

    def pending(self, limit: int = 100, *, exclude: Collection[int] = ()) -> list[OutboxItem]:
        """Up to ``limit`` stored messages, oldest first, skipping the ids in ``exclude``."""
        skip = set(exclude)
        items: list[OutboxItem] = []
        with self._lock:
            cur = self._conn.execute(
                "SELECT id, topic, payload, qos, retain, created, attempts FROM outbox"
                " ORDER BY id LIMIT ?",
                (limit + len(skip),),
            )
            for r in cur:
                if r[0] not in skip:
                    items.append(OutboxItem(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5], r[6]))
                    if len(items) == limit:
                        break
        return items

    def mark_attempt(self, ids: Iterable[int]) -> None:
        """Count one more publish attempt for each of these ids (missing ids are ignored)."""
        params = [(i,) for i in ids]
        if not params:
            return
        with self._lock, self._transaction() as db:
            db.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", params)

    def ack(self, id: int) -> bool:
        """Delete an acknowledged message; False if it was already gone (acked or dropped)."""
        with self._lock:
            with self._transaction() as db:
                found = db.execute("SELECT length(payload) FROM outbox WHERE id = ?", (id,))
                row = found.fetchone()
                if row is None:
                    return False
                db.execute("DELETE FROM outbox WHERE id = ?", (id,))
            self._count -= 1
            self._bytes -= int(row[0])
        return True

    def stats(self) -> OutboxStats:
        """Pending rows and bytes, and the total dropped since the file was created."""
        with self._lock:
            return OutboxStats(self._count, self._bytes, self._dropped)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT; the commit is fsynced before this returns."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:  # also when COMMIT itself failed (disk full)
                self._conn.execute("ROLLBACK")
            raise

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = "a file is in the way" if isinstance(e, FileExistsError) else e.strerror
            raise OutputError(f"cannot create outbox directory {self.path.parent}: {why}") from None
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if e.sqlite_errorcode & 0xFF not in _CORRUPTION_CODES:
                raise OutputError(f"cannot open the outbox {self.path}: {first_line(e)}") from None
            reason = first_line(e)
        self.corrupt_path = self._move_aside()
        self.recovered_from_corruption = True
        log.warning(
            "outbox %s is unreadable (%s); moved it to %s and started a new one",
            self.path,
            reason,
            self.corrupt_path,
        )
        try:
            return self._connect()
        except sqlite3.Error as e:
            raise OutputError(f"cannot open the outbox {self.path}: {first_line(e)}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutputError(
                    f"the outbox {self.path} was written by a newer agent (v{version})"
                )
            conn.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")
            # Scans the whole table, so most damage shows up here rather than in a later put.
            self._count, self._bytes, self._dropped = conn.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0),"
                " (SELECT value FROM meta WHERE key = 'dropped') FROM outbox"
            ).fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        """Rename the database (and its WAL, which must not be replayed into a new file)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        try:
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(self.path.name + suffix)
                if side.exists():
                    side.replace(aside.with_name(aside.name + suffix))
        except OSError as e:
            raise OutputError(f"cannot move the corrupt outbox {self.path} aside: {e}") from None
        return aside
