"""Log lines that cannot hurt the service: at most one per key and interval, arguments clipped,
and a failure to format or write never raised.

A flood of hostile messages makes a flood of identical warnings; :class:`SafeLog` writes the
first of each kind, then one line per ``interval`` saying how many were left out. Arguments are
clipped to one line of ``clip`` characters, so a 150 KB string costs a log line of 300.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict


def clip(value: object, limit: int = 300) -> str:
    """``value`` as one line of at most ``limit`` characters; never raises."""
    try:
        text = str(value)
    except Exception:  # a hostile __str__, a recursion
        text = f"<unprintable {type(value).__name__}>"
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\x00", "\\0")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SafeLog:
    """Rate-limited, clipped, never-raising log lines over ``logger``."""

    def __init__(
        self, logger: logging.Logger, *, interval: float = 10.0, max_keys: int = 1024
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()
        """key: (when its last line was written, lines left out since)."""

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.ERROR, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        try:
            if not self.logger.isEnabledFor(level):
                return
            now = time.monotonic()
            with self._lock:
                last, skipped = self._keys.get(key, (-float("inf"), 0))
                if now - last < self.interval:
                    self._keys[key] = (last, skipped + 1)
                    return
                self._keys[key] = (now, 0)
                self._keys.move_to_end(key)
                while len(self._keys) > self.max_keys:
                    self._keys.popitem(last=False)
            line = msg % tuple(clip(a) for a in args)
            if skipped:
                line += f" ({skipped} more like it in the last {self.interval:.0f} s)"
            self.logger.log(level, "%s", line)
        except Exception:  # logging must never stop the caller
            pass
