"""REST API tokens written straight into a service's database."""

from __future__ import annotations

import os


def make_api_token(db_url: str, role: str = "admin", name: str | None = None) -> str:
    """A REST API token made directly in a service's database, as ``edgeops tokens create``
    does (the tables are made when missing); a running service accepts it at once."""
    from edgeops.service import storage
    from edgeops.service.auth import Tokens

    engine = storage.connect(db_url)
    try:
        return Tokens(storage.Store(engine)).create(
            name or f"test-{role}-{os.urandom(3).hex()}", role
        )
    finally:
        engine.dispose()
