"""Resumable bundle downloads for over-the-air updates: HTTP(S) with Range, a size limit, a
timeout per network operation, retries with back-off, and a deadline for the whole download."""

from __future__ import annotations

import http.client
import logging
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from edgeops.core.errors import DownloadFailed, first_line

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024


def download(
    url: str,
    dest: Path,
    *,
    size: int,
    ca: Path | None = None,
    max_bytes: int,
    timeout: float,
    attempts: int,
    seconds: float | None = None,
    stop: threading.Event | None = None,
    check: Callable[[str], None] | None = None,
) -> None:
    """Fetch ``url`` into ``dest``, continuing what ``dest`` already holds (HTTP Range).

    ``timeout`` bounds each network operation (connect, or one read, which returns whatever
    bytes have arrived); ``seconds`` bounds the whole download, attempts and pauses included. It
    is checked between reads, so a server that trickles bytes is given up on within one
    ``timeout`` of it. Raises :class:`DownloadFailed` when the server sends more than ``size`` or
    ``max_bytes``, refuses, every attempt ends early, the time is up, or ``stop`` is set.
    A redirect is followed only where ``check`` (given the new URL) raises nothing; it raises
    :class:`DownloadFailed` to refuse one.
    """
    context = _context(ca)  # https: the server's certificate against ca, else the system's CAs
    handlers: list[urllib.request.BaseHandler] = [_Redirects(check)]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    limit = min(size, max_bytes)
    ends = None if seconds is None else time.monotonic() + seconds

    def left() -> float:
        """Seconds until the deadline; raises once it has passed (or ``stop`` is set)."""
        if stop is not None and stop.is_set():
            raise DownloadFailed("the agent is stopping")
        if ends is None:
            return timeout
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise DownloadFailed(
                f"the download did not finish within {seconds:g} s ({have} of {size} bytes)"
            )
        return remaining

    last = "no attempt made"
    have = 0
    for attempt in range(attempts):
        if attempt:  # back off (1, 2, 4 … s): a service restarting comes back meanwhile
            log.info("download of %s interrupted (%s); resuming", url, last)
            pause = min(2.0 ** (attempt - 1), 8.0, left())
            if stop is not None and stop.wait(pause):
                raise DownloadFailed("the agent is stopping")
        op_timeout = min(timeout, left())
        have = dest.stat().st_size if dest.exists() else 0
        if have > limit:
            dest.unlink()
            have = 0
        if have == size:
            return
        headers = {"Range": f"bytes={have}-"} if have else {}
        try:
            with opener.open(  # the scheme is checked: http or https
                urllib.request.Request(url, headers=headers), timeout=op_timeout
            ) as resp:
                if have and resp.status != 206:  # the server ignored the range: start again
                    have = 0
                length = resp.headers.get("Content-Length")
                if length is not None and have + int(length) > limit:
                    raise DownloadFailed(_too_large(have + int(length), size, max_bytes))
                with dest.open("ab" if have else "wb") as f:
                    while chunk := resp.read1(_CHUNK):  # what has arrived, up to _CHUNK
                        left()
                        have += len(chunk)
                        if have > limit:
                            raise DownloadFailed(_too_large(have, size, max_bytes))
                        f.write(chunk)
                    f.flush()
            if have == size:
                return
            last = f"the transfer ended after {have} of {size} bytes"
        except urllib.error.HTTPError as e:
            if e.code < 500:
                raise DownloadFailed(f"download refused: HTTP {e.code} {e.reason}") from None
            last = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            last = first_line(e)
    raise DownloadFailed(f"download failed after {attempts} attempt(s): {last}")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that ``check`` lets through."""

    def __init__(self, check: Callable[[str], None] | None) -> None:
        self._check = check

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if self._check is not None:
            self._check(urllib.parse.urljoin(req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _context(ca: Path | None) -> ssl.SSLContext | None:
    if ca is None:
        return None
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as e:
        raise DownloadFailed(f"update.ca {ca}: {first_line(e)}") from None


def _too_large(got: int, size: int, max_bytes: int) -> str:
    if got > max_bytes:
        return f"the download ({got} bytes or more) exceeds the limit of {max_bytes} bytes"
    return f"the download ({got} bytes or more) is larger than the expected {size} bytes"
