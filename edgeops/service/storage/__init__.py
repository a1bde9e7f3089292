"""All of the service's SQL, one concern per module (see :mod:`~edgeops.service.storage.store`):
no other part of the service imports SQLAlchemy or touches a table (``tests/test_boundaries.py``
checks it)."""

from sqlalchemy.engine import Connection

from edgeops.service.storage.schema import connect
from edgeops.service.storage.store import Store
from edgeops.service.storage.telemetry import (
    DeadLetter,
    NewWindow,
    StoredBatch,
    StoredWindow,
    decode_stored,
)

__all__ = [
    "Connection",
    "DeadLetter",
    "NewWindow",
    "Store",
    "StoredBatch",
    "StoredWindow",
    "connect",
    "decode_stored",
]
