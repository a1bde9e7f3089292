"""The agent's gate for commands: a command is acted on only when
:func:`edgeops.core.commands.check` finds nothing wrong with it, and the counter of every command
let through is persisted first.

The last accepted counter lives in ``STORE/commands.json`` (write, fsync, rename) before the
command is carried out, so a replay after a restart is refused too. When that file is lost or
unreadable the last counter is unknown: the guard then refuses, as possible replays, commands
issued before the moment it found out, and accepts those issued after.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from device_agent.config import CommandsConfig
from edgeops.core import commands, wire
from edgeops.core.errors import UsageError
from edgeops.core.files import atomic_write
from edgeops.core.signing import VerifyKey, load_verify_keys

log = logging.getLogger(__name__)

STATE_FILE = "commands.json"


class CommandGuard:
    """Checks each command against the trusted command keys, this device's fleet and id, the
    clock and the last counter; thread-safe."""

    def __init__(
        self,
        config: CommandsConfig,
        *,
        fleet: str,
        device: str,
        state_dir: Path,
        bundle_keys: Sequence[VerifyKey] = (),
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.device = device
        keys = load_verify_keys(config.trusted_keys) if config.trusted_keys else []
        self.keys = {k.key_id: k for k in keys}
        shared = sorted(set(self.keys) & {k.key_id for k in bundle_keys})
        if shared:
            raise UsageError(
                f"config: commands.trusted_keys holds a bundle key ({', '.join(shared)}); "
                "commands are signed by a key of their own (edgeops keys generate)"
            )
        self.path = state_dir / STATE_FILE
        self._lock = threading.Lock()
        self._last, self._issued_after = self._read()
        if config.allow_unsigned:
            log.warning(
                "DEVELOPMENT MODE: unsigned commands are accepted (commands.allow_unsigned); "
                "never on a fleet"
            )
        elif not self.keys:
            log.warning("no trusted command keys (commands.trusted_keys): every command is refused")

    @property
    def mode(self) -> str:
        """How commands are checked, for the ``started`` event."""
        if self.config.allow_unsigned:
            return "development: unsigned commands accepted"
        return f"signed by one of {len(self.keys)} trusted key(s)"

    @property
    def last_counter(self) -> int:
        return self._last

    def admit(self, cmd: wire.Command, *, now: float | None = None) -> commands.Refused | None:
        """None when ``cmd`` may be carried out (its counter is persisted before this returns);
        otherwise why it is refused."""
        now = time.time() if now is None else now
        with self._lock:
            refused = commands.check(
                cmd,
                keys=self.keys,
                fleet=self.fleet,
                device=self.device,
                now=now,
                last_counter=self._last,
                max_clock_skew=self.config.max_clock_skew,
                allow_unsigned=self.config.allow_unsigned,
            )
            if refused is None and cmd.issued < self._issued_after:
                refused = commands.Refused(
                    "replayed",
                    "issued before this device lost its record of accepted commands",
                )
            if refused is None:
                self._write(cmd.counter)
            return refused

    def _read(self) -> tuple[int, float]:
        """The last accepted counter, and the issued time before which commands are refused
        (0.0 unless the record was lost)."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0, 0.0
        except (OSError, ValueError) as e:
            log.error(
                "%s unreadable (%s): commands issued before now are refused as possible replays",
                self.path,
                e,
            )
            return 0, time.time()
        counter = data.get("counter") if isinstance(data, dict) else None
        if isinstance(counter, bool) or not isinstance(counter, int) or counter < 0:
            log.error("%s holds no counter: commands issued before now are refused", self.path)
            return 0, time.time()
        if (data.get("fleet"), data.get("device")) != (self.fleet, self.device):
            return 0, 0.0  # a renamed device: commands for the old name are foreign anyway
        return counter, 0.0

    def _write(self, counter: int) -> None:
        body = {"fleet": self.fleet, "device": self.device, "counter": counter}
        atomic_write(self.path, json.dumps(body).encode())
        self._last = counter
