"""Request bodies read under a cap while they stream in, before anything is buffered beyond it.

The agent's local API and the service's REST API read bodies through these, from any async
iterable of byte chunks (Starlette's ``request.stream()``); no web framework is imported here.
A declared ``Content-Length`` over the cap is refused before a byte is read; a chunked body (or
one that lies about its length) is refused as soon as the bytes read pass the cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Protocol

from edgeops.core.errors import BodyTooLarge

__all__ = ["BodyTooLarge", "Sink", "check_declared", "read_capped", "spool_capped"]


class Sink(Protocol):
    """Where :func:`spool_capped` writes: an open binary file."""

    def write(self, data: bytes, /) -> object: ...


def check_declared(content_length: str | None, limit: int) -> None:
    """Raise :class:`BodyTooLarge` when a declared length is over ``limit``. A missing or
    malformed header passes: the bytes are counted as they come."""
    if content_length is None:
        return
    try:
        declared = int(content_length)
    except ValueError:
        return
    if declared > limit:
        raise BodyTooLarge(limit)


async def read_capped(
    chunks: AsyncIterable[bytes], limit: int, *, content_length: str | None = None
) -> bytes:
    """The whole body, in memory, if it is at most ``limit`` bytes; else :class:`BodyTooLarge`
    once the bytes read pass the cap (at most ``limit`` plus one chunk is ever held)."""
    check_declared(content_length, limit)
    body = bytearray()
    async for chunk in chunks:
        if len(body) + len(chunk) > limit:
            raise BodyTooLarge(limit)
        body += chunk
    return bytes(body)


async def spool_capped(
    chunks: AsyncIterable[bytes],
    limit: int,
    sink: Sink,
    *,
    content_length: str | None = None,
) -> int:
    """Write the body to ``sink`` (a file: memory stays flat whatever the size) and return its
    length, or raise :class:`BodyTooLarge` once the bytes read pass ``limit``."""
    check_declared(content_length, limit)
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        sink.write(chunk)
    return size
