"""uvicorn serving the REST API (:func:`edgeops.service.api.make_app`) in a thread of the
service, over HTTPS when the config names a certificate and its key."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgeops.core.errors import EdgeOpsError, UsageError, first_line

if TYPE_CHECKING:
    from edgeops.service.server import Service


def _check_tls(cert: Path | None, key: Path | None) -> None:
    """A one-line :class:`UsageError` now for what would stop the server thread later."""
    if cert is None and key is None:
        return
    if cert is None or key is None:
        raise UsageError(
            "the REST API's TLS needs a certificate and its key (--http-cert, --http-key)"
        )
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise UsageError(f"--http-cert {cert} / --http-key {key}: {first_line(e)}") from None


class ApiServer:
    """The REST API in a background thread (see the module docstring)."""

    def __init__(self, service: Service) -> None:
        import uvicorn

        from edgeops.service.api import make_app

        cfg = service.config
        _check_tls(cfg.http_cert, cfg.http_key)
        self.tls = cfg.http_cert is not None
        self._server = uvicorn.Server(
            uvicorn.Config(
                make_app(service),
                host=cfg.http_host,
                port=cfg.http_port,
                log_config=None,
                log_level="warning",
                access_log=False,
                lifespan="on",
                ssl_certfile=None if cfg.http_cert is None else str(cfg.http_cert),
                ssl_keyfile=None if cfg.http_key is None else str(cfg.http_key),
            )
        )
        self._thread: threading.Thread | None = None
        self.host = cfg.http_host

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="api", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise EdgeOpsError("the service's REST API failed to start")
            time.sleep(0.01)

    @property
    def address(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://{self.host}:{port}"

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
