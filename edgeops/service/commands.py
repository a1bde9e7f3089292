"""Commands as the service sends them: each one numbered for its device and signed.

A :class:`CommandDraft` says what to tell a device (its arguments, when it was issued, until
when it holds); :meth:`CommandSigner.issue` turns drafts into :class:`edgeops.core.wire.Command`
messages: a counter per device from the database
(:meth:`edgeops.service.storage.counters.CounterRows.next`, shared by every service process)
and a signature by the command key (:func:`edgeops.core.commands.sign`). Without a command key
the commands go out unsigned, which devices refuse unless they are in development mode; the
service says so loudly at start.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeops.core import commands, topics, wire
from edgeops.core.errors import UsageError
from edgeops.core.signing import SigningKey, load_signing_key
from edgeops.service.storage import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandDraft:
    """A command before it is numbered and signed."""

    id: str
    args: wire.CommandArgs
    issued: float
    deadline: float
    """Unix time after which the device refuses it."""


@dataclass(frozen=True)
class Addressed:
    """A draft for one device of a fleet."""

    fleet: str
    device: str
    draft: CommandDraft


class CommandSigner:
    """Numbers and signs the service's commands; see the module docstring."""

    def __init__(
        self,
        store: Store,
        key: SigningKey | None,
        *,
        bundle_key_ids: Iterable[str] = (),
    ) -> None:
        if key is not None and key.key_id in set(bundle_key_ids):
            raise UsageError(
                f"the command key {key.key_id} is also trusted for bundles; commands are "
                "signed by a key of their own (edgeops keys generate --name command)"
            )
        self.store = store
        self.key = key
        if key is None:
            log.warning(
                "no command key (--command-key): commands go out UNSIGNED, and devices refuse "
                "them unless they are in development mode (commands.allow_unsigned)"
            )

    @classmethod
    def from_file(
        cls, store: Store, path: Path | None, *, bundle_key_ids: Iterable[str] = ()
    ) -> CommandSigner:
        key = None if path is None else load_signing_key(path)
        return cls(store, key, bundle_key_ids=bundle_key_ids)

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else self.key.key_id

    def issue(self, batch: Sequence[Addressed]) -> list[tuple[str, wire.Command]]:
        """``(topic, command)`` for each draft: numbered (one transaction for the batch), then
        signed."""
        counters = self.store.counters.next([(a.fleet, a.device) for a in batch])
        out = []
        for a, counter in zip(batch, counters, strict=True):
            cmd = wire.Command(
                id=a.draft.id,
                fleet=a.fleet,
                device=a.device,
                issued=a.draft.issued,
                deadline=a.draft.deadline,
                counter=counter,
                args=a.draft.args,
            )
            if self.key is not None:
                cmd = commands.sign(cmd, self.key)
            out.append((topics.cmd(a.fleet, a.device), cmd))
        return out
