"""Who may call the service's REST API: tokens with roles, and signed bundle links for devices.

Tokens
    ``eo_`` and 43 URL-safe characters: 256 random bits. The database keeps only the token's
    SHA-256 (``api_tokens``), beside its name and role. A token is random, not a password a
    person chose, so one round of a fast hash resists guessing as well as a slow password hash
    would, and checking a request stays one indexed read. The token itself is shown once, when
    it is made (``edgeops tokens create``), and cannot be read back.

Roles
    ``read`` < ``deploy`` < ``admin``: a token may do what its role and every lower role may.
    read: fleet, devices, drift, alerts, stats, dead letters, models and deployments;
    deploy: start and abort deployments; admin: register bundles.

Bundle links
    Devices download bundles with a link the service signs into each update command:
    ``/v1/bundles/SHA256?expires=UNIX&sig=HMAC``, an HMAC-SHA256 over the bundle's sha256 and
    the expiry with a secret every service process on the database shares
    (``service_secrets``). A link names one bundle and stops working at its expiry; devices
    need no token of their own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Literal, get_args

from edgeops.core.errors import UsageError
from edgeops.service.storage import Store

Role = Literal["read", "deploy", "admin"]
ROLES: tuple[Role, ...] = get_args(Role)
"""Lowest first: each role may do what the roles before it may."""

OPEN: Literal["open"] = "open"
"""The role of a REST route that needs no token (health, the API's description)."""

TOKEN_PREFIX = "eo_"
_TOKEN = re.compile(r"eo_[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
LINK_SECRET = "bundle-links"
"""The name of the bundle links' secret in ``service_secrets``."""


def role(text: str) -> Role:
    """``text`` as a role, or :class:`UsageError` naming the roles."""
    if text not in ROLES:
        raise UsageError(f"unknown role {text!r}: use one of {', '.join(ROLES)}")
    return text


def allows(have: Role, need: Role) -> bool:
    """Whether a token of role ``have`` may do what needs ``need``."""
    return ROLES.index(have) >= ROLES.index(need)


def digest(token: str) -> str:
    """What the database keeps of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``edgeops tokens list`` shows it (never the token itself)."""

    name: str
    role: Role
    created: float
    last_used: float | None


class Tokens:
    """The REST API's tokens in the service's database (thread-safe)."""

    def __init__(self, store: Store, *, touch_every: float = 60.0) -> None:
        self.store = store
        self.touch_every = touch_every
        """A token's ``last_used`` is written at most this often (seconds): a read-heavy
        client does not turn every request into a write."""

    def create(self, name: str, role_name: str) -> str:
        """Make a token; the token (shown once: only its hash is kept)."""
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"token name {name!r}: 1 to 64 letters, digits, '.', '_', '-' or '@', "
                "starting with a letter or digit"
            )
        kind = role(role_name)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self.store.tokens.add(name, kind, digest(token), time.time())
        return token

    def list(self) -> list[TokenInfo]:
        """Every token, oldest first."""
        return [TokenInfo(n, role(r), c, u) for n, r, c, u in self.store.tokens.all()]

    def revoke(self, name: str) -> None:
        """Delete a token: requests carrying it are refused from now on."""
        if not self.store.tokens.delete(name):
            raise UsageError(f"no token named {name!r}")

    def count(self, role_name: Role | None = None) -> int:
        """How many tokens there are (of ``role_name``, if given)."""
        return self.store.tokens.count(role_name)

    def check(self, token: str) -> TokenInfo | None:
        """The token's name and role, or None when it is malformed, unknown or revoked."""
        if not _TOKEN.fullmatch(token):
            return None
        row = self.store.tokens.use(
            digest(token), roles=ROLES, now=time.time(), touch_every=self.touch_every
        )
        if row is None:
            return None
        return TokenInfo(row.name, role(row.role), row.created, row.last_used)


class BundleLinks:
    """Signs and checks bundle download links (see the module docstring)."""

    def __init__(self, secret: bytes, *, valid_for: float) -> None:
        if len(secret) < 16:
            raise ValueError("a link secret needs at least 16 bytes")
        if not valid_for > 0:
            raise ValueError("links must be valid for a positive number of seconds")
        self._secret = secret
        self.valid_for = valid_for

    @classmethod
    def of(cls, store: Store, *, valid_for: float) -> BundleLinks:
        """Links signed with the database's shared secret (made on first use)."""
        return cls(store.secret(LINK_SECRET), valid_for=valid_for)

    def _sig(self, sha256: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"bundle\0{sha256}\0{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def query(self, sha256: str, now: float | None = None) -> str:
        """``expires=…&sig=…`` for a link to bundle ``sha256`` valid from ``now``."""
        expires = int((time.time() if now is None else now) + self.valid_for) + 1
        return f"expires={expires}&sig={self._sig(sha256, expires)}"

    def problem(
        self, sha256: str, expires: str | None, sig: str | None, now: float | None = None
    ) -> str | None:
        """Why a link's ``expires`` and ``sig`` do not let it fetch bundle ``sha256`` (None:
        they do)."""
        if expires is None or sig is None:
            return "the link is not signed (expires and sig are needed)"
        try:
            when = int(expires)
        except ValueError:
            return "the link's expiry is not a unix time"
        if not hmac.compare_digest(
            sig.encode("utf-8", "replace"), self._sig(sha256, when).encode()
        ):
            return "the link's signature does not match"
        if (time.time() if now is None else now) > when:
            return "the link has expired"
        return None
