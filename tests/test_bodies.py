"""Request bodies are capped while they stream in: the agent's local API and the service's
``POST /v1/models`` answer 413 to an oversized body without buffering it (the server's RSS is
measured with psutil while a large chunked body, generated lazily, is sent to a real server in a
subprocess); the agent's Unix socket is created 0660."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from device_agent.agent import Agent
from device_agent.client import AgentClient
from device_agent.config import HttpConfig
from device_agent.http_api import MAX_BODY_BYTES
from edgeops.core.bodies import read_capped, spool_capped
from edgeops.core.errors import BodyTooLarge
from edgeops.service.api import MAX_BUNDLE_BYTES
from edgeops.testing import Mosquitto, free_port, make_api_token
from tests.test_agent import make_config

MiB = 2**20
RSS_GROWTH_BOUND = 128 * MiB
"""Generous: what the servers may grow by while refusing a body several times larger."""


# --- the helpers on their own -------------------------------------------------------------------


async def _chunks(sizes: list[int], seen: list[int]) -> AsyncIterator[bytes]:
    for n in sizes:
        seen.append(n)
        yield b"x" * n


def test_read_capped_stops_reading_at_the_cap() -> None:
    seen: list[int] = []
    assert asyncio.run(read_capped(_chunks([3, 4], seen), 7)) == b"x" * 7
    seen.clear()
    with pytest.raises(BodyTooLarge, match="over the limit of 10 bytes"):
        asyncio.run(read_capped(_chunks([4, 4, 4, 4, 4], seen), 10))
    assert seen == [4, 4, 4]  # refused at the chunk that passed the cap, not at the end
    seen.clear()
    with pytest.raises(BodyTooLarge):  # a declared length over the cap: not a byte read
        asyncio.run(read_capped(_chunks([1], seen), 10, content_length="11"))
    assert seen == []
    # A malformed declared length is left to the byte count.
    assert asyncio.run(read_capped(_chunks([2], seen), 10, content_length="x")) == b"xx"


def test_spool_capped_writes_to_the_sink(tmp_path: Path) -> None:
    seen: list[int] = []
    with (tmp_path / "body").open("wb") as f:
        assert asyncio.run(spool_capped(_chunks([5, 5], seen), 10, f)) == 10
    assert (tmp_path / "body").read_bytes() == b"x" * 10
    with (tmp_path / "body").open("wb") as f, pytest.raises(BodyTooLarge):
        asyncio.run(spool_capped(_chunks([6, 6, 6], seen), 10, f))


# --- a client that sends a large body and reads the answer while sending ------------------------


def _post_chunked(
    connect: Callable[[], socket.socket],
    path: str,
    total: int,
    chunk: int = MiB,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """POST ``total`` bytes with chunked transfer encoding, made one chunk at a time as sent.
    The answer is read while sending: a server that refuses early may close before the end."""
    sock = connect()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
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


def _tcp(port: int) -> Callable[[], socket.socket]:
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=60)


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
def _process(args: list[str], log: Path, ready: Callable[[], bool]) -> Iterator[int]:
    """Run ``python -m edgeops ARGS`` until the block ends; its pid once ``ready()``."""
    with log.open("ab") as err:
        p = subprocess.Popen([sys.executable, "-m", "edgeops", *args], stderr=err)
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


def _answers(port: int, path: str, headers: dict[str, str] | None = None) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


# --- the agent ----------------------------------------------------------------------------------


def test_the_agent_refuses_an_oversized_body_without_buffering_it(
    digits_bundles: tuple[Path, Path], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    conf = tmp_path / "agent.toml"
    conf.write_text(
        f'[device]\nid = "body-{uuid.uuid4().hex[:6]}"\n'
        f'[model]\nstore = "store"\nbundle = "{digits_bundles[0]}"\n'
        f'trusted_keys = ["{signing_keys[1]}"]\n'
        '[mqtt]\nenabled = false\noutbox = "outbox.db"\n'
        f"[http]\nport = {port}\n"
    )
    ready = lambda: _answers(port, "/v1/health")  # noqa: E731
    with _process(["agent", "run", "--config", str(conf)], tmp_path / "agent.log", ready) as pid:
        url = f"http://127.0.0.1:{port}"
        with AgentClient(url) as client:  # warm: the first prediction allocates what it needs
            client.predict(np.zeros((2, 8, 8)).tolist())
        total = 8 * MAX_BODY_BYTES  # 256 MiB
        with PeakRss(pid) as rss:
            status, body = _post_chunked(_tcp(port), "/v1/predict", total)
        print(f"\nagent, {total / MiB:.0f} MiB chunked body: {status}, {rss}")
        assert status == 413, body[:200]
        assert _one_line_error(body) == f"request body over the limit of {MAX_BODY_BYTES} bytes"
        assert rss.growth < RSS_GROWTH_BOUND, (rss.before, rss.peak)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/predict", headers={"Content-Length": str(10 * total)})
        declared = conn.getresponse()  # refused on its declared length, before any byte
        assert declared.status == 413 and "over the limit" in _one_line_error(declared.read())
        conn.close()
        deep = b"[" * 100_000 + b"]" * 100_000
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", "/v1/predict", body=b'{"inputs": ' + deep + b"}")
        nested = conn.getresponse()
        assert nested.status == 400, nested.read()[:200]
        assert _one_line_error(nested.read()) == "request body is nested too deeply"
        conn.close()
        with AgentClient(url) as client:  # still serving
            assert len(client.predict(np.zeros((1, 8, 8)).tolist())["ids"]) == 1


def test_the_agent_socket_is_0660_and_replaces_a_stale_one(
    digits_bundles: tuple[Path, Path], signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "agent.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))  # what a killed agent leaves behind
    stale.close()
    cfg = make_config(tmp_path, 1, digits_bundles[0], signing_keys, http=True)
    cfg = replace(cfg, http=HttpConfig(unix_socket=sock))
    old_umask = os.umask(0)  # the most permissive: the agent's mode must not depend on it
    try:
        agent = Agent(cfg, mqtt=False).start()
    finally:
        os.umask(old_umask)
    try:
        mode = os.stat(sock).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o660, oct(mode)
        with AgentClient(f"unix:{sock}") as client:
            assert client.health()["status"] == "ok"
    finally:
        agent.stop()
    assert not sock.exists()  # removed on stop
    sock.write_text("not a socket")  # any other file is left alone, and the start fails
    with pytest.raises(Exception, match="cannot create the local API socket"):
        Agent(cfg, mqtt=False).start()
    assert sock.read_text() == "not a socket"


# --- the service --------------------------------------------------------------------------------


def test_the_service_refuses_an_oversized_bundle_without_buffering_it(tmp_path: Path) -> None:
    port = free_port()
    # A broker of its own: a stopped service's persistent session stays in its shared
    # subscription group on the broker, and would take its share of a later service's messages.
    broker = Mosquitto(directory=tmp_path / "broker")  # started below
    db_url = f"sqlite:///{tmp_path / 'service.db'}"
    admin = {"Authorization": f"Bearer {make_api_token(db_url, 'admin')}"}
    reader = {"Authorization": f"Bearer {make_api_token(db_url, 'read')}"}
    args = ["serve", "--broker", f"mqtt://127.0.0.1:{broker.port}"]
    args += ["--db", db_url, "--http-port", str(port)]
    ready = lambda: _answers(port, "/healthz")  # noqa: E731
    with broker, _process(args, tmp_path / "service.log", ready) as pid:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/models", body=b"not a bundle", headers=admin)
        garbage = conn.getresponse()
        assert garbage.status == 400 and _one_line_error(garbage.read()) == (
            "the upload is not a bundle: File is not a zip file"
        )
        conn.close()
        total = MAX_BUNDLE_BYTES + 64 * MiB
        with PeakRss(pid) as rss:
            status, body = _post_chunked(_tcp(port), "/v1/models", total, headers=admin)
        print(f"\nservice, {total / MiB:.0f} MiB chunked body: {status}, {rss}")
        assert status == 413, body[:200]
        assert _one_line_error(body) == f"request body over the limit of {MAX_BUNDLE_BYTES} bytes"
        assert rss.growth < RSS_GROWTH_BOUND, (rss.before, rss.peak)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("POST", "/v1/models", headers={**admin, "Content-Length": str(10 * total)})
        declared = conn.getresponse()
        assert declared.status == 413 and "over the limit" in _one_line_error(declared.read())
        conn.close()
        # Without an admin token the body is never read: refused at once, whatever its size.
        for headers, code in (({}, 401), (reader, 403)):
            with PeakRss(pid) as rss:
                status, body = _post_chunked(_tcp(port), "/v1/models", total, headers=headers)
            assert status == code and _one_line_error(body), body[:200]
            assert rss.growth < RSS_GROWTH_BOUND, (rss.before, rss.peak)
        assert _answers(port, "/v1/models", reader)
