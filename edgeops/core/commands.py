"""Signed commands: the bytes a command key signs, and the checks a device makes before it acts.

The service signs every command with its *command key* (an ed25519 key made by ``edgeops keys
generate``, distinct from the keys that sign bundles). The signature covers
:func:`signed_bytes`: a domain prefix, then the command without its signature as compact JSON
with sorted keys (msgspec's encoding of the typed message, so both sides compute it from the
same typed fields). A device trusts a set of command public keys (several: a new key is trusted
before the old one is retired) and refuses a command, naming the reason
(:data:`REFUSALS`), unless it is

- signed by a trusted key (or unsigned, on a device explicitly in development mode),
- for this fleet and this device,
- within its time: not past its deadline, not issued further in the future than the clock skew
  allowed,
- newer than every command the device accepted before: its counter is above the last one.

:func:`check` is the pure part (the caller keeps the last counter and persists it);
:func:`sign` is the service's part. This is a core module: it runs on devices.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Literal, get_args

import msgspec

from edgeops.core import wire
from edgeops.core.signing import SigningKey, VerifyKey

DOMAIN = b"edgeops-command\x00"
"""Prefixed to what is signed, so a command signature cannot stand for any other signed text."""

Refusal = Literal[
    "unsigned",
    "unknown key",
    "bad signature",
    "foreign fleet",
    "foreign device",
    "expired",
    "from the future",
    "replayed",
]
REFUSALS: tuple[Refusal, ...] = get_args(Refusal)

_CANONICAL = msgspec.json.Encoder(order="sorted")


def signed_bytes(cmd: wire.Command) -> bytes:
    """What a command key signs: :data:`DOMAIN`, then ``cmd`` without its signature (the key id
    stays in) as compact JSON with sorted keys."""
    return DOMAIN + _CANONICAL.encode(msgspec.structs.replace(cmd, signature=None))


def sign(cmd: wire.Command, key: SigningKey) -> wire.Command:
    """``cmd`` signed by ``key``: its ``key`` field set to the key id and its signature.

    What is signed is the command as a device decodes it (encoded and decoded once here: an
    ``int`` given for a ``float`` field becomes the float a device reads), so both sides
    compute the same bytes; :class:`~edgeops.core.WireError` if it is not a valid command."""
    named = msgspec.structs.replace(cmd, key=key.key_id, signature=None)
    named = wire.decode(wire.encode(named), wire.Command)
    signature = key.sign(signed_bytes(named))
    return msgspec.structs.replace(named, signature=_b64(signature))


@dataclass(frozen=True)
class Refused:
    """Why a command is refused: one of :data:`REFUSALS` and a one-line explanation."""

    reason: Refusal
    message: str


def check(
    cmd: wire.Command,
    *,
    keys: dict[str, VerifyKey],
    fleet: str,
    device: str,
    now: float,
    last_counter: int,
    max_clock_skew: float,
    allow_unsigned: bool = False,
) -> Refused | None:
    """Why this device must refuse ``cmd``, or None when it may act on it.

    ``keys`` are the trusted command keys by key id; ``last_counter`` the highest counter this
    device accepted (0 before the first). The signature is checked first, so nothing an
    unauthenticated sender put in a command decides anything else. An unsigned command passes
    only with ``allow_unsigned`` (development mode); a signed one is checked even then.
    """
    if cmd.signature is None or cmd.key is None:
        if not allow_unsigned:
            return Refused("unsigned", "the command is not signed")
    else:
        key = keys.get(cmd.key)
        if key is None:
            return Refused(
                "unknown key", f"signed by key {cmd.key}, which this device does not trust"
            )
        raw = _unb64(cmd.signature)
        if raw is None or not key.verify(raw, signed_bytes(cmd)):
            return Refused("bad signature", f"the signature of key {cmd.key} does not match")
    if cmd.fleet != fleet:
        return Refused("foreign fleet", f"the command is for fleet {cmd.fleet!r}, not {fleet!r}")
    if cmd.device != device:
        return Refused(
            "foreign device", f"the command is for device {cmd.device!r}, not {device!r}"
        )
    if now > cmd.deadline:
        return Refused("expired", f"the command expired {now - cmd.deadline:.0f} s ago")
    if cmd.issued > now + max_clock_skew:
        return Refused(
            "from the future",
            f"the command was issued {cmd.issued - now:.0f} s ahead of this device's clock "
            f"(at most {max_clock_skew:g} s allowed)",
        )
    if cmd.counter <= last_counter:
        return Refused(
            "replayed",
            f"counter {cmd.counter} is not above {last_counter}, the last this device accepted",
        )
    return None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    """The bytes of URL-safe base64 (padded or not), or None when it is not that."""
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 64 else None
