"""Waiting in tests for something another thread or process does."""

from __future__ import annotations

import time
from collections.abc import Callable


def until(cond: Callable[[], object], timeout: float = 30.0, *, every: float = 0.1) -> bool:
    """Poll ``cond`` every ``every`` seconds until it is true or ``timeout`` seconds have
    passed; whether it became true (it is asked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
