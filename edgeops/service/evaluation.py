"""Drift evaluation off the store loop: a queue of pending evaluations, coalesced per device and
model, and the workers that run them.

The store loop hands every stored window to :meth:`EvaluationQueue.put`; a device that sends
faster than it can be evaluated has one pending evaluation, at its newest window, however many
windows arrived meanwhile (the windows stored since its last evaluation are kept with it, so the
span is read from memory where it can be). Storing therefore runs at the broker's pace and
evaluating at its own; while the intake has a backlog (``busy()``), a worker pauses after each
evaluation for ``BACKLOG_SHARE``'s complement of its time, so that evaluations take at most that
share of one interpreter (threads share one) and the backlog drains first. The lag from a
window's arrival to its verdict is measured (a :class:`~edgeops.core.latency.LogHistogram` of
seconds) and reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from prometheus_client import Histogram

from edgeops.core.errors import EdgeOpsError
from edgeops.core.latency import LogHistogram
from edgeops.service.logs import SafeLog
from edgeops.service.storage import StoredWindow

log = logging.getLogger(__name__)

SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""The buckets of the evaluation duration and lag histograms that ``/metrics`` exposes."""
BACKLOG_SHARE = 0.2
"""The most of the time evaluations take while the intake has a backlog."""

Key = tuple[str, str, str, str]
"""(fleet, device, model name, model version)."""


@dataclass
class Pending:
    """One device's pending evaluation."""

    newest: StoredWindow
    known: dict[int, StoredWindow] = field(default_factory=dict)
    """Windows stored since the last evaluation (at most ``keep`` of the newest)."""
    first_arrival: float = 0.0
    """When the oldest window it accounts for arrived (the service's clock)."""


class EvaluationQueue:
    """Pending evaluations, oldest first, one per key; bounded (the oldest is dropped, and
    counted, past ``max_keys``). Thread-safe."""

    def __init__(self, *, max_keys: int = 100_000, keep: int = 30) -> None:
        self.max_keys = max_keys
        self.keep = keep
        self.dropped = 0
        self.coalesced = 0
        self._cond = threading.Condition()
        self._pending: OrderedDict[Key, Pending] = OrderedDict()
        self._running: set[Key] = set()

    def __len__(self) -> int:
        with self._cond:
            return len(self._pending)

    def put(self, windows: Sequence[StoredWindow]) -> None:
        with self._cond:
            for w in windows:
                m = w.telemetry.model
                if m is None:
                    continue
                key = (w.fleet, w.device, m.name, m.version)
                p = self._pending.get(key)
                if p is None:
                    p = self._pending[key] = Pending(w, first_arrival=w.received)
                else:
                    self.coalesced += 1
                    if w.id > p.newest.id:
                        p.newest = w
                p.known[w.id] = w
                if len(p.known) > self.keep:
                    del p.known[min(p.known)]
            while len(self._pending) > self.max_keys:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._cond.notify_all()

    def take(self, timeout: float) -> tuple[Key, Pending] | None:
        """The oldest pending evaluation no other worker is running, or None after
        ``timeout``; call :meth:`done` with its key after running it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for key in self._pending:
                    if key not in self._running:
                        self._running.add(key)
                        return key, self._pending.pop(key)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)

    def done(self, key: Key) -> None:
        with self._cond:
            self._running.discard(key)
            self._cond.notify_all()

    def idle(self) -> bool:
        """Nothing pending and nothing running."""
        with self._cond:
            return not self._pending and not self._running


class Evaluator:
    """Runs queued evaluations with ``evaluate(newest, known)``; counts and times them."""

    def __init__(
        self,
        queue: EvaluationQueue,
        evaluate: Callable[[StoredWindow, dict[int, StoredWindow]], None],
        *,
        busy: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.evaluate = evaluate
        self.busy = busy
        """True while the intake has a backlog: evaluations give way."""
        self.clock = clock
        self.evaluations = 0
        self.errors = 0
        self._lock = threading.Lock()
        self.lag = LogHistogram(0.01, 1e-3)
        """Seconds from a window's arrival to the verdict that accounts for it."""
        self.duration = LogHistogram(0.01, 1e-6)
        """Seconds one evaluation took."""
        # The same two as Prometheus histograms (not registered: the service's collector
        # exposes them, see edgeops.service.metrics).
        self.duration_seconds = Histogram(
            "edgeops_evaluation_duration_seconds",
            "Seconds one drift evaluation took",
            buckets=SECONDS_BUCKETS,
            registry=None,
        )
        self.lag_seconds = Histogram(
            "edgeops_evaluation_lag_seconds",
            "Seconds from a window's arrival to the drift verdict that accounts for it",
            buckets=SECONDS_BUCKETS,
            registry=None,
        )
        self.heartbeats: dict[str, float] = {}
        self._log = SafeLog(log)

    def run_one(self, timeout: float) -> bool:
        """Run one pending evaluation (False when none came within ``timeout``)."""
        taken = self.queue.take(timeout)
        if taken is None:
            return False
        key, p = taken
        started = time.monotonic()
        try:
            self.evaluate(p.newest, p.known)
            ok = True
        except (EdgeOpsError, ValueError, KeyError) as e:
            ok = False
            self._log.error("evaluation", "drift evaluation for %s failed: %s", key[1], e)
        except Exception as e:  # stored and acked already: count, log, go on
            ok = False
            self._log.error(
                "evaluation", "drift evaluation for %s failed: %s: %s", key[1], type(e).__name__, e
            )
        finally:
            self.queue.done(key)
        took = time.monotonic() - started
        with self._lock:
            self.evaluations += 1
            self.errors += not ok
            lag = max(self.clock() - p.first_arrival, 0.0)
            self.duration.add(took)
            self.lag.add(lag)
        self.duration_seconds.observe(took)
        self.lag_seconds.observe(lag)
        return True

    def run(self, stop: threading.Event) -> None:
        name = threading.current_thread().name
        while not stop.is_set():
            self.heartbeats[name] = time.monotonic()
            started = time.monotonic()
            if self.run_one(0.5) and self.busy is not None and self.busy():
                took = time.monotonic() - started
                stop.wait(max(took * (1 - BACKLOG_SHARE) / BACKLOG_SHARE, 0.005))

    def drain(self, timeout: float = 60.0) -> bool:
        """Run pending evaluations in this thread until none is left (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run_one(0.05) and self.queue.idle():
                return True
        return False

    def stats(self) -> dict[str, float | int | None]:
        with self._lock:
            return {
                "evaluations": self.evaluations,
                "evaluation_errors": self.errors,
                "pending": len(self.queue),
                "coalesced": self.queue.coalesced,
                "dropped": self.queue.dropped,
                "lag_p50_s": self.lag.quantile(0.5),
                "lag_p95_s": self.lag.quantile(0.95),
                "duration_p50_s": self.duration.quantile(0.5),
                "duration_p95_s": self.duration.quantile(0.95),
            }
