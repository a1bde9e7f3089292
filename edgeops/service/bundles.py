"""Registered bundles' bytes, kept in the service's database so that every service process can
serve them to devices (``GET /v1/bundles/{sha256}``), with a small in-memory cache."""

from __future__ import annotations

import threading
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from edgeops.core.errors import BundleError
from edgeops.core.manifest import Manifest
from edgeops.service import db

CACHED = 4
"""Bundles each process keeps in memory once read."""


class BundleStore:
    """Stores verified bundles and reads them back (thread-safe)."""

    def __init__(self, store: db.Store) -> None:
        self.store = store
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes, manifest: Manifest, sha256: str) -> None:
        """Keep a verified bundle's bytes for devices to download; refuse a second, different
        bundle under a name and version already registered."""
        name, version = manifest.name, manifest.version
        with self.store.begin() as conn:
            row = conn.execute(
                sa.select(db.bundles.c.sha256).where(
                    db.bundles.c.name == name, db.bundles.c.version == version
                )
            ).first()
            if row is not None:
                if row[0] != sha256:
                    raise BundleError(
                        f"{name} {version} is already registered with other contents; "
                        "give the new bundle a new version"
                    )
                return
            conn.execute(
                sa.insert(db.bundles).values(
                    sha256=sha256,
                    name=name,
                    version=version,
                    size=len(data),
                    data=data,
                    registered=time.time(),
                )
            )

    def get(self, sha256: str) -> bytes | None:
        """A registered bundle's bytes (kept in memory once read)."""
        with self._lock:
            data = self._cache.get(sha256)
        if data is not None:
            return data
        with self.store.begin() as conn:
            row = conn.execute(
                sa.select(db.bundles.c.data).where(db.bundles.c.sha256 == sha256)
            ).first()
        if row is None:
            return None
        with self._lock:
            if len(self._cache) >= CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[sha256] = bytes(row[0])
        return bytes(row[0])


def find_bundle(conn: Connection, name: str, version: str) -> dict[str, Any] | None:
    """A registered bundle's file sha256 and size, and its model file's sha256; None if it is
    not registered."""
    row = (
        conn.execute(
            sa.select(db.bundles.c.sha256, db.bundles.c.size).where(
                db.bundles.c.name == name, db.bundles.c.version == version
            )
        )
        .mappings()
        .first()
    )
    if row is None:
        return None
    model = conn.execute(
        sa.select(db.models.c.model_sha256).where(
            db.models.c.name == name, db.models.c.version == version
        )
    ).scalar_one()
    return {"sha256": row["sha256"], "size": int(row["size"]), "model_sha256": model}
