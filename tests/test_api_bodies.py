"""``POST /v1/models`` caps its body while it streams in: a real ``edgeops serve`` process
answers 413 to a chunked body past MAX_BUNDLE_BYTES without buffering it (its RSS is sampled with
psutil while the body, made lazily, is sent), refuses an over-long declared length before
reading a byte, and refuses a caller without an admin token before reading the body at all."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from edgeops.service.api import MAX_BUNDLE_BYTES
from edgeops.testing import Mosquitto, free_port, make_api_token

MiB = 2**20
RSS_GROWTH_BOUND = 128 * MiB
"""Generous: what the server may grow by while refusing a body several times larger."""


def _post_chunked(
    port: int, path: str, total: int, headers: dict[str, str], chunk: int = MiB
) -> tuple[int, bytes]:
    """POST ``total`` bytes with chunked transfer encoding, made one chunk at a time as sent.
    The answer is read while sending: a server that refuses early may close before the end."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/octet-stream\r\n"
        f"{extra}Transfer-Encoding: chunked\r\n\r\n".encode()
    )
    block = b"7" * chunk

    def send() -> None:
        with contextlib.suppress(OSError):  # the server answered and hung up
            for _ in range(total // chunk):
                sock.sendall(b"%x\r\n%s\r\n" % (chunk, block))
            sock.sendall(b"0\r\n\r\n")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, resp.read()
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        sender.join(timeout=30)


class PeakRss:
    """Samples a process's RSS (psutil) in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.before = self.process.memory_info().rss
        self.peak = self.before
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.before

    def __str__(self) -> str:
        return f"RSS {self.before / MiB:.0f} MiB, peak {self.peak / MiB:.0f} MiB"


def _one_line_error(body: bytes) -> str:
    assert b"\n" not in body.strip()
    error = json.loads(body)["error"]
    assert isinstance(error, str) and "\n" not in error
    return error


@contextlib.contextmanager
def _serve(args: list[str], log: Path, ready: Callable[[], bool]) -> Iterator[int]:
    """Run ``python -m edgeops serve ARGS`` until the block ends; its pid once ``ready()``."""
    with log.open("ab") as err:
        p = subprocess.Popen([sys.executable, "-m", "edgeops", "serve", *args], stderr=err)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert p.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        yield p.pid
    finally:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _request(
    port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _answers(port: int) -> bool:
    try:
        return _request(port, "GET", "/healthz", {})[0] == 200
    except OSError:
        return False


def test_the_service_refuses_an_oversized_bundle_without_buffering_it(
    broker: Mosquitto, tmp_path: Path
) -> None:
    port = free_port()
    url = f"sqlite:///{tmp_path / 'service.db'}"
    admin = {"Authorization": f"Bearer {make_api_token(url, 'admin')}"}
    reader = {"Authorization": f"Bearer {make_api_token(url, 'read')}"}
    args = ["--broker", f"mqtt://127.0.0.1:{broker.port}", "--db", url, "--http-port", str(port)]
    with _serve(args, tmp_path / "service.log", lambda: _answers(port)) as pid:
        status, body = _request(port, "POST", "/v1/models", admin, b"not a bundle")
        assert status == 400 and _one_line_error(body) == (
            "the upload is not a bundle: File is not a zip file"
        )
        total = MAX_BUNDLE_BYTES + 64 * MiB
        with PeakRss(pid) as rss:
            status, body = _post_chunked(port, "/v1/models", total, admin)
        print(f"\nservice, {total / MiB:.0f} MiB chunked body: {status}, {rss}")
        assert status == 413, body[:200]
        assert _one_line_error(body) == f"request body over the limit of {MAX_BUNDLE_BYTES} bytes"
        assert rss.growth < RSS_GROWTH_BOUND, (rss.before, rss.peak)
        declared = {**admin, "Content-Length": str(10 * total)}
        status, body = _request(port, "POST", "/v1/models", declared)  # not a byte sent
        assert status == 413 and "over the limit" in _one_line_error(body)
        # without an admin token the body is never read: refused at once, whatever its size
        for headers, code in (({}, 401), (reader, 403)):
            with PeakRss(pid) as rss:
                status, body = _post_chunked(port, "/v1/models", total, headers)
            assert status == code and _one_line_error(body), body[:200]
            assert rss.growth < RSS_GROWTH_BOUND, (rss.before, rss.peak)
        assert _request(port, "GET", "/v1/models", reader)[0] == 200  # still serving
