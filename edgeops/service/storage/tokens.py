"""The REST API's tokens in storage (``api_tokens``): each token's name, role and SHA-256 (never
the token itself), when it was made and last used."""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from edgeops.core.errors import UsageError
from edgeops.service.storage.schema import api_tokens


class TokenRow(NamedTuple):
    name: str
    role: str
    created: float
    last_used: float | None


class TokenRows:
    """Reads and writes of ``api_tokens``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, role: str, digest: str, created: float) -> None:
        """Keep a new token's digest; :class:`UsageError` when the name is taken."""
        t = api_tokens.c
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.name).where(t.name == name)).first() is not None:
                raise UsageError(f"a token named {name!r} exists; revoke it first")
            conn.execute(
                sa.insert(api_tokens).values(name=name, role=role, digest=digest, created=created)
            )

    def all(self) -> list[TokenRow]:
        """Every token, oldest first."""
        t = api_tokens.c
        q = sa.select(t.name, t.role, t.created, t.last_used).order_by(t.created, t.name)
        with self.engine.begin() as conn:
            return [TokenRow(n, r, c, u) for n, r, c, u in conn.execute(q)]

    def delete(self, name: str) -> bool:
        """Delete the token ``name``; False when there is none."""
        with self.engine.begin() as conn:
            gone = conn.execute(sa.delete(api_tokens).where(api_tokens.c.name == name))
        return gone.rowcount != 0

    def count(self, role: str | None = None) -> int:
        """How many tokens there are (of ``role``, if given)."""
        t = api_tokens.c
        q = sa.select(sa.func.count()).select_from(api_tokens)
        if role is not None:
            q = q.where(t.role == role)
        with self.engine.begin() as conn:
            return int(conn.execute(q).scalar_one())

    def use(
        self, digest: str, *, roles: Collection[str], now: float, touch_every: float
    ) -> TokenRow | None:
        """The token of ``digest`` if its role is one of ``roles`` (else None), as it was
        before this use; its ``last_used`` is set to ``now`` when older than ``touch_every``
        seconds, in the same transaction."""
        t = api_tokens.c
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(t.name, t.role, t.created, t.last_used).where(t.digest == digest)
            ).first()
            if row is None or row[1] not in roles:
                return None
            if row[3] is None or now - row[3] > touch_every:
                conn.execute(sa.update(api_tokens).where(t.digest == digest).values(last_used=now))
        return TokenRow(row[0], row[1], row[2], row[3])
