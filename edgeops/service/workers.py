"""The service's threads under supervision: each loop runs in a thread that is restarted when it
dies, at most ``max_restarts`` times in ``restart_window`` seconds; a loop whose heartbeat is
older than its stall limit makes the service not ready, and past the exit limit the service
fails (``edgeops serve`` exits non-zero for its supervisor to restart it) rather than pretending.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from edgeops.service.logs import clip

log = logging.getLogger(__name__)


@dataclass
class Worker:
    """One supervised loop: ``target()`` runs until the stop event is set."""

    name: str
    target: Callable[[], None]
    heartbeat: Callable[[], float]
    """The monotonic time the loop last showed life."""
    stall_after: float
    """Seconds without a heartbeat that make it stalled."""
    thread: threading.Thread | None = None
    restarts: deque[float] = field(default_factory=deque)
    crash: str | None = None
    """Why it last died."""


class Workers:
    """Starts, watches and restarts :class:`Worker` loops."""

    def __init__(
        self,
        stop: threading.Event,
        *,
        max_restarts: int = 5,
        restart_window: float = 600.0,
        exit_after: float = 600.0,
    ) -> None:
        self.stop = stop
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.exit_after = exit_after
        self.workers: list[Worker] = []
        self.failed: str | None = None
        """Why the service cannot go on (None while it can)."""
        self.failed_event = threading.Event()
        self.restarted = 0

    def add(
        self,
        name: str,
        target: Callable[[], None],
        *,
        heartbeat: Callable[[], float],
        stall_after: float,
    ) -> None:
        self.workers.append(Worker(name, target, heartbeat, stall_after))

    def start(self) -> None:
        for w in self.workers:
            self._launch(w)

    def _launch(self, w: Worker) -> None:
        def run() -> None:
            try:
                w.target()
            except BaseException as e:  # recorded; the supervisor decides what follows
                w.crash = clip(f"{type(e).__name__}: {e}")
                log.error("worker %s died: %s", w.name, w.crash)

        w.thread = threading.Thread(target=run, name=w.name, daemon=True)
        w.thread.start()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if w.thread is not None:
                w.thread.join(max(deadline - time.monotonic(), 0.0))

    def check(self) -> list[str]:
        """Restart dead loops; the problems now (empty when every loop is alive and beating).
        Sets :attr:`failed` when a loop dies too often or stalls past ``exit_after``."""
        if self.stop.is_set():
            return []
        now = time.monotonic()
        problems: list[str] = []
        for w in self.workers:
            if w.thread is not None and not w.thread.is_alive():
                while w.restarts and now - w.restarts[0] > self.restart_window:
                    w.restarts.popleft()
                if len(w.restarts) >= self.max_restarts:
                    self._fail(
                        f"worker {w.name} died {len(w.restarts) + 1} times in "
                        f"{self.restart_window:.0f} s (last: {w.crash})"
                    )
                    problems.append(f"{w.name}: dead ({w.crash})")
                    continue
                w.restarts.append(now)
                self.restarted += 1
                log.warning("restarting worker %s (it died: %s)", w.name, w.crash)
                self._launch(w)
                problems.append(f"{w.name}: restarted ({w.crash})")
                continue
            silent = now - w.heartbeat()
            if silent > w.stall_after:
                problems.append(f"{w.name}: stalled for {silent:.0f} s")
                if silent > w.stall_after + self.exit_after:
                    self._fail(f"worker {w.name} stalled for {silent:.0f} s")
        if self.failed is not None:
            problems.append(self.failed)
        return problems

    def _fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            log.error("the service cannot go on: %s", why)
            self.failed_event.set()
