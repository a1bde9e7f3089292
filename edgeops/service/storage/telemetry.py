"""Device messages in storage: telemetry windows, events, statuses (through
:mod:`~edgeops.service.storage.devices`) and dead letters, written in batches; the windows read
back for drift spans, the API and the engine.

Messages arrive in batches (:meth:`TelemetryRows.add_batch`): one transaction stores a batch's
windows and events with one multi-row insert each and upserts each device once. The statements of
the hot paths (batch inserts, span reads) are built once with bind parameters and executed with
parameter lists: SQLAlchemy caches their compiled form.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgeops.core import wire
from edgeops.core.errors import WireError
from edgeops.drift.span import newest_span
from edgeops.service.logs import SafeLog
from edgeops.service.storage.devices import DeviceRows
from edgeops.service.storage.schema import MESSAGE_KEY, dead_letters, events, windows

log = logging.getLogger(__name__)


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
    """A decoded telemetry window on its way into :meth:`TelemetryRows.add_batch`."""

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
    """What :meth:`TelemetryRows.add_batch` stored; the rest of the batch was already stored."""

    windows: list[StoredWindow]
    """The new windows, oldest id first."""
    events: int
    duplicates: int
    """Windows and events already stored, or repeated within the batch."""
    dead_letters: int = 0


class TelemetryRows:
    """Writes of device messages and reads of the stored windows, events and dead letters."""

    def __init__(
        self, engine: Engine, insert: Callable[[sa.Table], Any], devices: DeviceRows
    ) -> None:
        self.engine = engine
        self._devices = devices
        key = list(MESSAGE_KEY)
        self._add_windows = (
            insert(windows)
            .on_conflict_do_nothing(index_elements=key)
            .returning(windows.c.id, *(windows.c[k] for k in MESSAGE_KEY))
        )
        self._add_events = (
            insert(events)
            .on_conflict_do_nothing(index_elements=key)
            .returning(*(events.c[k] for k in MESSAGE_KEY))
        )
        self._add_dead_letters = sa.insert(dead_letters)
        w = windows.c
        self._span_counts = (
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
        self._payloads = sa.select(w.id, w.payload, w.received).where(
            w.id.in_(sa.bindparam("ids", expanding=True))
        )

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
        with self.engine.begin() as conn:
            stored: list[StoredWindow] = []
            if firsts:
                rows = [_window_row(w, now) for w in firsts.values()]
                for wid, *key in conn.execute(self._add_windows, rows):
                    t = firsts[tuple(key)].telemetry
                    stored.append(StoredWindow(int(wid), key[0], t.device, t, now))
            stored.sort(key=lambda sw: sw.id)
            event_keys: list[tuple[Any, ...]] = []
            if event_rows:
                event_keys = [
                    tuple(r) for r in conn.execute(self._add_events, list(event_rows.values()))
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
            for device_key, sent in self._devices.status_sent(conn, list(ended)).items():
                if sent is not None and ended[device_key] < sent:
                    touched[device_key] = {}
            for fleet, st in statuses:  # locked here too, in the same order, before updating
                touched.setdefault((fleet, st.device), {})
            self._devices.touch_many(conn, touched, now)
            for fleet, s in statuses:
                self._devices.set_status(conn, fleet, s, now)
            if dead:
                conn.execute(self._add_dead_letters, [d.row(dead_letter_bytes) for d in dead])
        duplicates = len(new_windows) - len(stored) + len(new_events) - len(event_keys)
        return StoredBatch(stored, len(event_keys), duplicates, len(dead))

    def add_window(self, fleet: str, t: wire.Telemetry, payload: bytes) -> int | None:
        """Store a telemetry window; its id, or None when it was already stored."""
        stored = self.add_batch([NewWindow(fleet, t, payload)])
        return stored.windows[0].id if stored.windows else None

    def add_event(self, fleet: str, e: wire.Event) -> bool:
        """Store an event; False when it was already stored."""
        return self.add_batch(new_events=[(fleet, e)]).events == 1

    def set_status(self, fleet: str, s: wire.Status) -> bool:
        """Record presence; an older status than the one stored is ignored (False)."""
        with self.engine.begin() as conn:
            return self._devices.set_status(conn, fleet, s, time.time())

    # --- windows ------------------------------------------------------------------------------

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
        with self.engine.begin() as conn:
            recent = itertools.takewhile(
                lambda row: row[2] >= since, conn.execute(self._span_counts, params)
            )
            ids = [
                int(wid)
                for wid, _, _ in newest_span(
                    recent, lambda row: int(row[1]), min_samples=min_samples, limit=limit
                )
            ]
            missing = [i for i in ids if i not in known]
            rows = conn.execute(self._payloads, {"ids": missing}).all() if missing else []
        found = dict(known)
        for wid, payload, received in rows:
            tele = decode_stored(payload, wid)
            if tele is not None:
                found[wid] = StoredWindow(wid, newest.fleet, newest.device, tele, received)
        return [found[i] for i in ids if i in found]

    def windows_by_id(self, fleet: str, device: str, ids: Sequence[int]) -> list[StoredWindow]:
        """Stored windows of one device by id (oldest first); undecodable ones left out."""
        if not ids:
            return []
        with self.engine.begin() as conn:
            rows = conn.execute(self._payloads, {"ids": list(ids)}).all()
        out = []
        for wid, payload, received in sorted(rows):
            tele = decode_stored(payload, wid)
            if tele is not None:
                out.append(StoredWindow(wid, fleet, device, tele, received))
        return out

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
        with self.engine.begin() as conn:
            rows = conn.execute(q).all()
        out = []
        for wid, fleet_, device_, payload, received in rows:
            tele = decode_stored(payload, wid)
            if tele is not None:
                out.append(StoredWindow(int(wid), fleet_, device_, tele, received))
        return out

    # --- events and dead letters -------------------------------------------------------------

    def events_of(self, fleet: str, device: str, limit: int = 50) -> list[dict[str, Any]]:
        """The device's newest events, in arrival order."""
        q = (
            sa.select(events)
            .where(events.c.fleet == fleet, events.c.device == device)
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        with self.engine.begin() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]

    def dead_letters(self, *, reason: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest dead letters (payload prefix as text, undecodable bytes escaped)."""
        q = sa.select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
        if reason is not None:
            q = q.where(dead_letters.c.reason == reason)
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["payload"] = bytes(r["payload"]).decode("utf-8", "backslashreplace")
        return rows


_unreadable = SafeLog(log)


def decode_stored(payload: bytes, row_id: int | None = None) -> wire.Telemetry | None:
    """A stored window's telemetry, or None (logged) when it no longer decodes: a row stored
    before the wire's bounds tightened must not make a read fail."""
    try:
        return wire.decode(payload, wire.Telemetry)
    except WireError as e:
        _unreadable.warning("unreadable", "stored window %s is left out: %s", row_id, e)
        return None
