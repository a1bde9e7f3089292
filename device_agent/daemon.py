"""Running the agent as a daemon: logging, signals, and the main thread's wait.

``SIGTERM`` and ``SIGINT`` stop it cleanly: the current window is flushed into the outbox, the
outbox drained while the broker is reachable, the offline status published, and the process exits.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from device_agent.agent import Agent
from device_agent.config import AgentConfig, load_config
from edgeops.core import logstream


def configure_logging(level: str, json_lines: bool) -> None:
    logstream.configure(level, json_lines=json_lines)


def run(config_path: Path | None, *, json_logs: bool | None = None, ready: Any = None) -> int:
    """Load the config, start the agent, wait for SIGTERM/SIGINT, stop. Returns the exit code."""
    cfg: AgentConfig = load_config(config_path)
    configure_logging(cfg.log.level, cfg.log.json if json_logs is None else json_logs)
    with logstream.route_native_stderr():  # LiteRT's own lines go through logging too
        return _serve(cfg, ready)


def _serve(cfg: AgentConfig, ready: Any) -> int:
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
