"""Registered bundles' bytes, kept in the service's database so that every service process can
serve them to devices (``GET /v1/bundles/{sha256}``), with a small in-memory cache."""

from __future__ import annotations

import threading

from edgeops.core.manifest import Manifest
from edgeops.service.storage import Store

CACHED = 4
"""Bundles each process keeps in memory once read."""


class BundleStore:
    """Stores verified bundles and reads them back (thread-safe)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def add(self, data: bytes, manifest: Manifest, sha256: str) -> None:
        """Keep a verified bundle's bytes for devices to download; refuse a second, different
        bundle under a name and version already registered."""
        self.store.models.add_bundle(data, manifest, sha256)

    def get(self, sha256: str) -> bytes | None:
        """A registered bundle's bytes (kept in memory once read)."""
        with self._lock:
            data = self._cache.get(sha256)
        if data is not None:
            return data
        data = self.store.models.bundle(sha256)
        if data is None:
            return None
        with self._lock:
            if len(self._cache) >= CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[sha256] = data
        return data
