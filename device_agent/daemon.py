"""Running the agent as a daemon: logging, signals, and the main thread's wait.

``SIGTERM`` and ``SIGINT`` stop it cleanly: the current window is flushed into the outbox, the
outbox drained while the broker is reachable, the offline status published, and the process exits.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from device_agent.config import AgentConfig, load_config


class JsonLines(logging.Formatter):
    """One JSON object per log record: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, json_lines: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLines()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def run(config_path: Path | None, *, json_logs: bool | None = None, ready: Any = None) -> int:
    """Load the config, start the agent, wait for SIGTERM/SIGINT, stop. Returns the exit code."""
    cfg: AgentConfig = load_config(config_path)
    configure_logging(cfg.log.level, cfg.log.json if json_logs is None else json_logs)
    log = logging.getLogger("device_agent")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t0 = time.perf_counter()
    agent = Agent(cfg).start()
    where = agent.http.address if agent.http is not None else "no local API"
    log.info("agent %s started in %.2f s (%s)", cfg.device.id, time.perf_counter() - t0, where)
    if ready is not None:
        ready(agent)
    try:
        while not stop.wait(1.0):
            pass
    finally:
        agent.stop()
        log.info("agent stopped")
    return 0
