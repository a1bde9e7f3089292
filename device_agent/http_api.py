"""The agent's local HTTP API (Starlette on uvicorn), on localhost or a Unix socket.

::

    POST /v1/predict   {"inputs": [...]} | {"records": [{...}]} | {"columns": {...}}, "raw": false
                       (a model with several inputs: {"inputs": {"NAME": [...], ...}})
                       -> {"ids", "predicted", "outputs", "model", "latency_ms"}
    POST /v1/feedback  {"id": "...", "label": ...} or {"items": [{"id", "label"}, ...]}
                       -> {"accepted": n, "unknown": m}
    GET  /v1/health    -> status, device, boot, uptime, MQTT connection, outbox
    GET  /v1/model     -> name, version, sha256, format, task, labels, signature, preprocessing
    GET  /metrics      -> Prometheus metrics (:mod:`device_agent.metrics`)

Bad input answers 400 with ``{"error": "..."}``, a body over :data:`MAX_BODY_BYTES` 413 (read
while it streams in: an oversized body is never buffered), no model 503, an inference failure
500; the agent keeps serving either way. A Unix socket is created with mode 0660 (the agent's
user and group may connect, no one else).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from device_agent.config import HttpConfig
from device_agent.metrics import CONTENT_TYPE
from edgeops.core.bodies import read_capped
from edgeops.core.errors import (
    BodyTooLarge,
    EdgeOpsError,
    InputDataError,
    ModelError,
    RuntimeBackendError,
)

if TYPE_CHECKING:
    from device_agent.agent import Agent

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 2**20
SOCKET_MODE = 0o660


def _error(e: EdgeOpsError) -> JSONResponse:
    status = 400
    if isinstance(e, BodyTooLarge):
        status = 413
    elif isinstance(e, ModelError):
        status = 503
    elif isinstance(e, RuntimeBackendError):
        status = 500
    return JSONResponse({"error": str(e)}, status_code=status)


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_capped(
        request.stream(), MAX_BODY_BYTES, content_length=request.headers.get("content-length")
    )
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputDataError(f"request body is not JSON ({e})") from None
    except RecursionError:
        raise InputDataError("request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise InputDataError("request body must be a JSON object")
    return body


def make_app(agent: Agent) -> Starlette:
    """The Starlette application serving ``agent``."""

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await _body(request)
            keys = [k for k in ("inputs", "records", "columns") if k in body]
            if len(keys) != 1:
                raise InputDataError("send exactly one of 'inputs', 'records' or 'columns'")
            raw = bool(body.get("raw", False))
            result = await run_in_threadpool(agent.predict, body[keys[0]], raw=raw)
        except EdgeOpsError as e:
            return _error(e)
        return JSONResponse(result.to_dict())

    async def feedback(request: Request) -> JSONResponse:
        try:
            body = await _body(request)
            items = body.get("items", [body] if "id" in body else None)
            if not isinstance(items, list) or not all(
                isinstance(i, dict) and "id" in i and "label" in i for i in items
            ):
                raise InputDataError("send {'id', 'label'} or {'items': [{'id', 'label'}, ...]}")
            accepted = sum(agent.feedback(str(i["id"]), i["label"]) for i in items)
        except EdgeOpsError as e:
            return _error(e)
        return JSONResponse({"accepted": accepted, "unknown": len(items) - accepted})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse(agent.health())

    async def model(request: Request) -> JSONResponse:
        try:
            return JSONResponse(agent.model_info())
        except EdgeOpsError as e:
            return _error(e)

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(agent.metrics.exposition)
        return Response(body, media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            Route("/v1/predict", predict, methods=["POST"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/health", health, methods=["GET"]),
            Route("/v1/model", model, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class HttpServer:
    """uvicorn serving :func:`make_app` in a background thread."""

    def __init__(self, agent: Agent, config: HttpConfig) -> None:
        import uvicorn

        uds = None if config.unix_socket is None else str(config.unix_socket)
        self._server = uvicorn.Server(
            uvicorn.Config(
                make_app(agent),
                host=config.host,
                port=config.port,
                uds=uds,
                log_config=None,  # the daemon configures logging, not the server
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self._socket_inode: int | None = None  # of the file at unix_socket, while it is ours
        self.config = config

    def start(self, timeout: float = 10.0) -> None:
        sockets = None
        if self.config.unix_socket is not None:
            self._socket = _unix_socket(self.config.unix_socket)
            self._socket_inode = os.stat(self.config.unix_socket).st_ino
            sockets = [self._socket]
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise EdgeOpsError(f"the local HTTP API failed to start on {self.address}")
            if time.monotonic() > deadline:
                raise EdgeOpsError(f"the local HTTP API did not start within {timeout} s")
            time.sleep(0.01)
        log.info("local API on %s", self.address)

    @property
    def address(self) -> str:
        """``http://host:port`` (the bound port when 0 was asked for) or ``unix:PATH``."""
        if self.config.unix_socket is not None:
            return f"unix:{self.config.unix_socket}"
        port = self.config.port
        servers = getattr(self._server, "servers", None)
        if servers:
            port = servers[0].sockets[0].getsockname()[1]
        return f"http://{self.config.host}:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        path = self.config.unix_socket
        try:  # unless another agent has taken the path since
            if path is not None and os.stat(path).st_ino == self._socket_inode:
                path.unlink()
        except OSError:
            pass


def _unix_socket(path: Path) -> socket.socket:
    """A Unix socket bound at ``path`` with mode 0660, not yet listening: nobody can connect
    before its mode is set, since a socket accepts connections only once it listens. A stale
    socket a killed agent left at ``path`` is replaced; any other file there is an error."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.stat(path).st_mode):
            path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, SOCKET_MODE)
    except OSError as e:
        sock.close()
        reason = e.strerror or str(e)
        raise EdgeOpsError(f"cannot create the local API socket {path}: {reason}") from None
    return sock
