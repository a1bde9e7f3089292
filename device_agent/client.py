"""A small client for the agent's local HTTP API (standard library only).

``AgentClient("http://127.0.0.1:8470")`` or ``AgentClient("unix:/run/edgeops/agent.sock")``.
Every method raises :class:`edgeops.core.errors.EdgeOpsError` subclasses with the agent's message.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from edgeops.core.errors import EdgeOpsError, InputDataError, ModelError, RuntimeBackendError


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class AgentClient:
    """Calls a running agent. Keeps one connection open; not thread-safe."""

    def __init__(self, address: str = "http://127.0.0.1:8470", *, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self.address.startswith("unix:"):
                self._conn = _UnixConnection(self.address[5:], self.timeout)
            else:
                u = urlsplit(self.address)
                self._conn = http.client.HTTPConnection(
                    u.hostname or "127.0.0.1", u.port or 80, timeout=self.timeout
                )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):  # one retry on a connection the server closed
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self.close()
                if attempt:
                    raise EdgeOpsError(f"cannot reach the agent at {self.address}: {e}") from None
        try:
            result = json.loads(payload) if payload else None
        except ValueError:
            raise EdgeOpsError(f"the agent answered {resp.status} with non-JSON") from None
        if resp.status >= 400:
            message = result.get("error", "") if isinstance(result, dict) else ""
            error = {400: InputDataError, 503: ModelError, 500: RuntimeBackendError}.get(
                resp.status, EdgeOpsError
            )
            raise error(message or f"HTTP {resp.status}")
        return result

    def predict(self, data: Any, *, kind: str = "inputs", raw: bool = False) -> dict[str, Any]:
        """``kind`` is ``inputs`` (arrays), ``records`` (list of dicts) or ``columns``."""
        result: dict[str, Any] = self._call("POST", "/v1/predict", {kind: data, "raw": raw})
        return result

    def feedback(self, items: list[tuple[str, Any]]) -> dict[str, Any]:
        body = {"items": [{"id": i, "label": label} for i, label in items]}
        result: dict[str, Any] = self._call("POST", "/v1/feedback", body)
        return result

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/health")
        return result

    def model(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/v1/model")
        return result
