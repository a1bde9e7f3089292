"""The service's intake: device messages in, checked, stored exactly once, acknowledged.

::

    paho's network thread ──put──► a byte-bounded queue ──batches──► the store thread:
        check each message (decode bounds, topic, clocks, baseline fit, rate limits)
        store the accepted ones and dead-letter the refused ones in one transaction
        ack every message of the batch to the broker, then hand the new windows on

What a message can do to it:

- **Malformed or inconsistent** (the wire's bounds, a device id that is not the topic's, times
  outside ``max_clock_skew`` ahead or ``max_age`` behind the service's clock, windows that do not
  fit the registered baseline): refused with a reason, counted, and kept as a dead letter
  (rate-limited, bounded, purged by retention); never stored.
- **An event whose data this service cannot read** (a kind it does not know, from a newer agent,
  or data that does not fit its kind's record, :mod:`edgeops.core.events`): stored as it came,
  counted (``untyped_events``) and logged; readers take nothing from its data.
- **Too many** (one device past its token bucket, device ids never seen past the new-device
  quota): refused, counted, acknowledged; not dead-lettered (that would be the flood again).
- **Unstorable** (the database refuses it while it accepts others): a batch that fails while the
  database still answers is split in halves until the failing message is alone; that message is
  dead-lettered whole with the database's reason, the rest is stored. While the database does
  not answer at all, the batch is retried with back-off, unacknowledged, until it is stored or
  the service stops (the broker then sends it again).

A message is acknowledged only after it is stored, dead-lettered or refused for good, so a crash
loses nothing the broker delivered. The loop's heartbeat, queue depth and lag are what the
health endpoints report.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgeops.core import events, topics, wire
from edgeops.core.errors import WireError
from edgeops.service.baselines import Baselines
from edgeops.service.config import ServiceConfig
from edgeops.service.limits import Buckets, KnownKeys, TokenBucket
from edgeops.service.logs import SafeLog, clip
from edgeops.service.storage import DeadLetter, NewWindow, Store, StoredWindow

log = logging.getLogger(__name__)

INTAKE_REASONS = ("topic", "clock", "baseline", "rate limited", "device quota", "storage")
"""Why the intake refuses a message that decodes (the wire's reasons come first)."""
REASONS: tuple[str, ...] = (*wire.REASONS, *INTAKE_REASONS)
COUNTED_ONLY = frozenset({"rate limited", "device quota"})
"""Reasons that are counted but not kept as dead letters."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    received: float
    """The service's clock when it arrived."""
    mid: int = 0
    qos: int = 0


@dataclass
class Counters:
    """What this process's intake has seen, for ``GET /v1/stats``."""

    received: int = 0
    stored_windows: int = 0
    stored_events: int = 0
    statuses: int = 0
    duplicates: int = 0
    storage_retries: int = 0
    dead_letters: int = 0
    dead_letters_dropped: int = 0
    """Refused messages not kept as dead letters because their rate limit was reached."""
    evaluation_errors: int = 0
    untyped_events: int = 0
    """Events kept whose data is not their kind's record (an unknown kind, or data that does not
    fit it); counted as they arrive."""
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["rejected"] = dict(self.rejected)
        out["rejected_total"] = sum(self.rejected.values())
        return out


@dataclass(frozen=True, slots=True)
class _Item:
    """A delivery after its check: the message to store (``fleet`` and ``message`` set) or the
    dead letter to keep (``dead`` set)."""

    delivery: Delivery
    fleet: str = ""
    message: wire.DeviceMessage | None = None
    dead: DeadLetter | None = None


@dataclass(frozen=True)
class Outcome:
    """What one batch came to."""

    windows: list[StoredWindow]
    events: int = 0
    statuses: int = 0
    duplicates: int = 0
    dead_letters: int = 0


class _Stopping(Exception):
    """The service stopped while a batch waited for the database; it is not acknowledged."""


class Intake:
    """The store loop and everything it owns; see the module docstring.

    ``ack(deliveries)`` acknowledges messages to the broker; ``on_stored(windows)`` receives the
    windows each batch stored (the drift evaluation queue).
    """

    def __init__(
        self,
        store: Store,
        baselines: Baselines,
        config: ServiceConfig,
        *,
        ack: Callable[[Sequence[Delivery]], None] | None = None,
        on_stored: Callable[[list[StoredWindow]], None] | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.baselines = baselines
        self.config = config
        self.limits = config.intake
        self.ack = ack
        self.on_stored = on_stored
        self.stop = stop or threading.Event()
        self.clock = clock
        self.counters = Counters()
        self.decoded = wire.WireStats()
        self._queue: collections.deque[Delivery] = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._per_device = Buckets(self.limits.device_rate, self.limits.device_burst)
        per_minute = self.limits.new_devices_per_minute
        self._new_devices = TokenBucket.full(per_minute / 60.0, per_minute, time.monotonic())
        self._dead_letter_budget = TokenBucket.full(
            self.limits.dead_letter_rate, self.limits.dead_letter_burst, time.monotonic()
        )
        self._known = KnownKeys()
        self._log = SafeLog(log)
        self.heartbeat = time.monotonic()
        """When the store loop last did anything (waited for work included)."""
        self.last_stored: float | None = None
        """The service's clock when a batch was last stored."""
        self.database_ok = True

    # --- the queue ----------------------------------------------------------------------------

    def put(self, delivery: Delivery) -> None:
        """Queue a delivery; waits while ``queue_bytes`` are queued (the broker holds the rest)."""
        size = len(delivery.payload)
        with self._cond:
            while (
                self._queue
                and self._queued_bytes + size > self.limits.queue_bytes
                and not self.stop.is_set()
            ):
                self._cond.wait(0.5)
            self._queue.append(delivery)
            self._queued_bytes += size
            self._cond.notify_all()

    def depth(self) -> tuple[int, int]:
        """Messages and payload bytes waiting to be stored."""
        with self._cond:
            return len(self._queue), self._queued_bytes

    def lag(self) -> float:
        """Seconds the oldest waiting message has waited (0 when none waits)."""
        with self._cond:
            oldest = self._queue[0].received if self._queue else None
        return 0.0 if oldest is None else max(0.0, self.clock() - oldest)

    def _take(self, timeout: float) -> list[Delivery]:
        with self._cond:
            if not self._queue:
                self._cond.wait(timeout)
            n = min(len(self._queue), self.limits.batch_size)
            batch = [self._queue.popleft() for _ in range(n)]
            self._queued_bytes -= sum(len(d.payload) for d in batch)
            self._cond.notify_all()
        return batch

    def run(self) -> None:
        """The store loop, until :attr:`stop` is set (what is still queued is not acked: the
        broker sends it again to the next session)."""
        while not self.stop.is_set():
            self.heartbeat = time.monotonic()
            batch = self._take(0.5)
            if batch:
                try:
                    self.process(batch)
                except _Stopping:
                    return

    # --- one batch ----------------------------------------------------------------------------

    def process(self, batch: Sequence[Delivery]) -> Outcome:
        """Check, store and acknowledge one batch; raises :class:`_Stopping` (nothing acked)
        when the service stops while the database is away."""
        self.counters.received += len(batch)
        now = time.monotonic()
        items: list[_Item] = []
        for d in batch:
            items.append(self._check(d))
        items = self._limit(items, now)
        outcome = self._store(items) if items else Outcome([])
        if self.ack is not None:
            self.ack(batch)
        if outcome.windows and self.on_stored is not None:
            self.on_stored(outcome.windows)  # before the counts: a counted window is queued
        c = self.counters
        c.stored_windows += len(outcome.windows)
        c.stored_events += outcome.events
        c.statuses += outcome.statuses
        c.duplicates += outcome.duplicates
        c.dead_letters += outcome.dead_letters
        self.last_stored = self.clock()
        for w in outcome.windows:
            self._known.add((w.fleet, w.device))
        return outcome

    def _refuse(self, d: Delivery, reason: str, detail: str) -> _Item | None:
        """Count a refusal; the dead letter to keep, if any."""
        self.counters.rejected[reason] += 1
        self._log.warning(reason, "refused a message on %s: %s: %s", d.topic, reason, detail)
        if reason in COUNTED_ONLY:
            return None
        if not self._dead_letter_budget.take(time.monotonic()):
            self.counters.dead_letters_dropped += 1
            return None
        return _Item(d, dead=DeadLetter(d.received, d.topic, reason, detail, d.payload))

    def _check(self, d: Delivery) -> _Item:
        """The delivery checked: a message to store, or a refusal (a dead letter, or nothing
        but a count: an item with neither)."""
        try:
            t = topics.parse(d.topic)
        except ValueError as e:
            return self._refuse(d, "topic", str(e)) or _Item(d)
        expected: type[wire.DeviceMessage]
        if t.kind == "telemetry":
            expected = wire.Telemetry
        elif t.kind == "events":
            expected = wire.Event
        elif t.kind == "status":
            expected = wire.Status
        else:
            return self._refuse(d, "topic", f"not a device topic: {t.kind}") or _Item(d)
        try:
            m = wire.decode(d.payload, expected)
        except WireError as e:
            self.decoded.reject(e)
            return self._refuse(d, e.reason, e.detail) or _Item(d)
        self.decoded.accept()
        if m.device != t.device:
            detail = f"the message names device {clip(m.device, 80)!r}"
            return self._refuse(d, "topic", detail) or _Item(d)
        problem = self._clock_problem(m, d.received)
        if problem is not None:
            return self._refuse(d, "clock", problem) or _Item(d)
        if isinstance(m, wire.Telemetry) and m.model is not None:
            baseline = self.baselines.get(m.model.name, m.model.version)
            misfit = None if baseline is None else baseline.misfit(m)
            if misfit is not None:
                return self._refuse(d, "baseline", misfit) or _Item(d)
        if isinstance(m, wire.Event):
            untyped = events.misfit(m.kind, m.data)
            if untyped is not None:
                self.counters.untyped_events += 1
                self._log.warning(
                    "untyped event",
                    "event %s on %s kept with untyped data: %s",
                    clip(m.kind, 64),
                    d.topic,
                    untyped,
                )
        return _Item(d, fleet=t.fleet, message=m)

    def _clock_problem(self, m: wire.DeviceMessage, received: float) -> str | None:
        ahead = self.limits.max_clock_skew
        behind = self.config.max_age
        times = [("sent", m.sent)]
        if isinstance(m, wire.Telemetry):
            times.append(("window_end", m.window_end))
        for name, value in times:
            if value > received + ahead:
                return f"{name} is {value - received:.0f} s ahead of the service's clock"
            # a retained status may be old (a device long gone): only its future is checked
            if not isinstance(m, wire.Status) and value < received - behind:
                return f"{name} is {received - value:.0f} s old, more than {behind:.0f} s"
        return None

    def _limit(self, items: list[_Item], now: float) -> list[_Item]:
        """Apply the per-device rate and the new-device quota; what is left to store."""
        out: list[_Item] = []
        passed: list[_Item] = []
        for it in items:
            if it.message is None:
                if it.dead is not None:
                    out.append(it)
                continue
            key = (it.fleet, it.message.device)
            if not self._per_device.take(key, now):
                dead = self._refuse(it.delivery, "rate limited", f"device {key[1]}")
                assert dead is None
                continue
            passed.append(it)
        keys = {(it.fleet, it.message.device) for it in passed if it.message is not None}
        unknown = sorted(k for k in keys if k not in self._known)
        refused: set[tuple[str, str]] = set()
        if unknown:
            for k in self.store.devices.known(unknown):
                self._known.add(k)
            for k in unknown:
                if k in self._known:
                    continue
                if self._new_devices.take(now):
                    self._known.add(k)
                else:
                    refused.add(k)
        for it in passed:
            assert it.message is not None
            if (it.fleet, it.message.device) in refused:
                self._refuse(it.delivery, "device quota", f"new device {it.message.device}")
            else:
                out.append(it)
        return out

    # --- storing ------------------------------------------------------------------------------

    def _store(self, items: list[_Item]) -> Outcome:
        """Store ``items`` in one transaction; on failure retry (the database is away) or
        split (the database refuses something in it); see the module docstring."""
        delay = 0.05
        attempts = 0
        while True:
            try:
                out = self._store_once(items)
                self.database_ok = True
                return out
            except Exception as e:
                if self.stop.is_set():
                    raise _Stopping from None
                problem = clip(f"{type(e).__name__}: {e}")
                if not self.store.answers():
                    self.database_ok = False
                    self.counters.storage_retries += 1
                    self._log.warning(
                        "database", "the database is unreachable (%s); retrying", problem
                    )
                    self._wait(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if len(items) > 1:
                    half = len(items) // 2
                    a, b = self._store(items[:half]), self._store(items[half:])
                    return _add(a, b)
                attempts += 1
                if attempts < 3:  # a deadlock or a restart under way: once more
                    self.counters.storage_retries += 1
                    self._wait(delay)
                    continue
                return self._give_up(items[0], problem)

    def _store_once(self, items: list[_Item]) -> Outcome:
        new_windows: list[NewWindow] = []
        new_events: list[tuple[str, wire.Event]] = []
        statuses: list[tuple[str, wire.Status]] = []
        dead: list[DeadLetter] = []
        for it in items:
            m = it.message
            if it.dead is not None:
                dead.append(it.dead)
            elif isinstance(m, wire.Telemetry):
                new_windows.append(NewWindow(it.fleet, m, it.delivery.payload))
            elif isinstance(m, wire.Event):
                new_events.append((it.fleet, m))
            elif isinstance(m, wire.Status):
                statuses.append((it.fleet, m))
        received = max(it.delivery.received for it in items)
        stored = self.store.telemetry.add_batch(
            new_windows,
            new_events,
            statuses,
            dead,
            dead_letter_bytes=self.limits.dead_letter_bytes,
            now=received,
        )
        return Outcome(
            stored.windows, stored.events, len(statuses), stored.duplicates, stored.dead_letters
        )

    def _give_up(self, item: _Item, problem: str) -> Outcome:
        """One message the database refuses: kept whole as a dead letter, counted."""
        if item.dead is not None:  # a dead letter that cannot be kept either
            self._log.error("lost", "a dead letter could not be stored: %s", problem)
            return Outcome([])
        self.counters.rejected["storage"] += 1
        d = item.delivery
        self._log.error("storage", "the database refused a message on %s: %s", d.topic, problem)
        dead = DeadLetter(d.received, d.topic, "storage", problem, d.payload)
        try:
            self.store.telemetry.add_batch(
                dead=[dead], dead_letter_bytes=len(d.payload), now=d.received
            )
        except Exception as e:
            self._log.error("lost", "a dead letter could not be stored: %s", e)
            return Outcome([])
        return Outcome([], dead_letters=1)

    def _wait(self, seconds: float) -> None:
        self.heartbeat = time.monotonic()
        if self.stop.wait(seconds):
            raise _Stopping


def _add(a: Outcome, b: Outcome) -> Outcome:
    return Outcome(
        sorted(a.windows + b.windows, key=lambda w: w.id),
        a.events + b.events,
        a.statuses + b.statuses,
        a.duplicates + b.duplicates,
        a.dead_letters + b.dead_letters,
    )
