"""Files written so that a crash leaves the old file or the new one, never a torn one, and their
digests.

:func:`staged` yields a temporary file beside the target; when the block ends without an error
the file is flushed, fsynced, given its mode and renamed over the target, and the directory is
fsynced so that the rename survives a power cut. On an error the temporary is removed and the
target is untouched. :func:`atomic_write` is the one-call form for bytes in memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def stage(path: Path, data: bytes, mode: int = 0o644) -> str:
    """Write ``data`` to a fsynced temporary file beside ``path``, with ``mode``; return its name.

    For commits of several files: stage each, then :func:`os.replace` them and :func:`fsync_dir`.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


@contextlib.contextmanager
def staged(path: Path, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A temporary file beside ``path`` that replaces it when the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    done = False
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        done = True
    finally:
        if not done:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    fsync_dir(path.parent)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with staged(path, mode) as f:
        f.write(data)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's contents, hex, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
