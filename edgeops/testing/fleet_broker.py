"""mosquitto running the shipped fleet configuration with a throwaway CA."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeops.testing.mosquitto import Mosquitto, find_mosquitto
from edgeops.testing.pki import SERVER_HOSTS
from edgeops.testing.ports import free_port

SERVICE_ACCOUNT = "edgeops-service"
"""The service's broker account in the shipped ACL (``deploy/mosquitto.acl``)."""
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
"""The shipped broker configuration (a source checkout's ``deploy/``)."""


class FleetBroker:
    """mosquitto running the shipped fleet configuration (``deploy/mosquitto.conf`` and
    ``deploy/mosquitto.acl``, verbatim but for the file locations and the two ports) with a
    throwaway CA (:mod:`edgeops.service.pki`): a TLS listener with passwords and an mTLS listener
    whose client certificates name the user.

    ``accounts`` (user name to password) go to the password file; the service's account
    (:data:`SERVICE_ACCOUNT`) gets a random password unless given. :meth:`settings` gives the
    :class:`~edgeops.core.broker.BrokerSettings` of an account, :meth:`issue` a client certificate
    for the mTLS listener.

        with FleetBroker(tmp_path / "broker", {"dev-1": "pw"}) as b:
            Service(ServiceConfig(broker=b.settings(SERVICE_ACCOUNT), ...))
    """

    def __init__(self, directory: Path, accounts: Mapping[str, str] | None = None) -> None:
        from edgeops.service import pki

        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        for name in ("mosquitto.conf", "mosquitto.acl"):
            if not (DEPLOY / name).is_file():
                raise RuntimeError(f"{DEPLOY / name}: the shipped broker configuration is missing")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = pki.make_ca(directory / "certs", f"edgeops test fleet CA {os.urandom(4).hex()}")
        server = pki.issue(self.ca, directory / "certs", "broker", server_hosts=SERVER_HOSTS)
        self.accounts = dict(accounts or {})
        self.accounts.setdefault(SERVICE_ACCOUNT, os.urandom(12).hex())
        self.tls_port, self.mtls_port = free_port(), free_port()
        self._broker = Mosquitto(directory=directory, port=self.tls_port)
        root = f"{directory}/"
        text = (DEPLOY / "mosquitto.conf").read_text()
        text = text.replace("/etc/mosquitto/certs/broker.crt", str(server.cert))
        text = text.replace("/etc/mosquitto/certs/broker.key", str(server.key))
        text = text.replace("/etc/mosquitto/", root).replace("/var/lib/mosquitto/", root)
        text = text.replace("listener 8883", f"listener {self.tls_port} 127.0.0.1")
        text = text.replace("listener 8884", f"listener {self.mtls_port} 127.0.0.1")
        user = ["user root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
        extra = [*user, f"log_dest file {directory}/mosquitto.log", "log_type all", ""]
        (directory / "mosquitto.conf").write_text(text + "\n" + "\n".join(extra))
        (directory / "mosquitto.acl").write_text((DEPLOY / "mosquitto.acl").read_text())
        self._broker._password_file(self.accounts)  # directory/passwd, as the config names it

    def url(self, *, mtls: bool = False) -> str:
        return f"mqtts://127.0.0.1:{self.mtls_port if mtls else self.tls_port}"

    def settings(self, user: str, *, password: str | None = None) -> Any:
        """The :class:`~edgeops.core.broker.BrokerSettings` of ``user`` over TLS with its password
        (``password`` overrides the account's, for a wrong one)."""
        from edgeops.core.broker import BrokerSettings

        return BrokerSettings(
            self.url(), username=user, password=password or self.accounts[user], ca=self.ca.cert
        )

    def mtls_settings(self, user: str) -> Any:
        """The settings of ``user`` on the mTLS listener, with a new client certificate."""
        from edgeops.core.broker import BrokerSettings

        cert = self.issue(user)
        return BrokerSettings(self.url(mtls=True), ca=self.ca.cert, cert=cert.cert, key=cert.key)

    def issue(self, name: str) -> Any:
        """A client certificate for ``name`` (its common name), signed by this broker's CA."""
        from edgeops.service import pki

        return pki.issue(self.ca, self.directory / "clients", name)

    def start(self) -> FleetBroker:
        self._broker.start()
        return self

    def stop(self) -> None:
        self._broker.stop()

    def restart(self) -> None:
        self._broker.restart()

    def __enter__(self) -> FleetBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text() if path.exists() else ""
