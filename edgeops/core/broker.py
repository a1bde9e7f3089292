"""How every edgeops component reaches the MQTT broker: one typed setting for the address, the
credentials and TLS, read from a URL, a config file and ``EDGEOPS_MQTT_*`` environment variables,
so that no secret has to appear on a command line.

::

    mqtt://HOST[:1883]          plain TCP (an insecure setup: ask for it)
    mqtts://HOST[:8883]         TLS; the broker's certificate is checked against ``ca`` (or the
                                system's roots), and a client certificate (``cert``, ``key``)
                                is presented when given (mTLS)

Environment (each overrides the file; a command-line option overrides both):

    EDGEOPS_MQTT_URL            the broker's URL
    EDGEOPS_MQTT_USERNAME       user name (a device's is its device id)
    EDGEOPS_MQTT_PASSWORD       password (or EDGEOPS_MQTT_PASSWORD_FILE: a file holding it)
    EDGEOPS_MQTT_CA             CA certificate (PEM) that signed the broker's certificate
    EDGEOPS_MQTT_CERT, EDGEOPS_MQTT_KEY
                                this client's certificate and key (mTLS)

:func:`connack_problem` turns a broker's refusal into one line a user can act on.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgeops.core.errors import UsageError

ENV_PREFIX = "EDGEOPS_MQTT_"
SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how to prove who this client is."""

    url: str = "mqtt://localhost:1883"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: Path | None = None
    """The CA certificate that signed the broker's (default: the system's roots)."""
    cert: Path | None = None
    """This client's certificate (mTLS); with ``key``."""
    key: Path | None = None
    insecure: bool = False
    """Accept a broker certificate whose name is not the host's (test brokers only)."""

    def __post_init__(self) -> None:
        self.address  # noqa: B018 - validates the URL
        if self.password is not None and self.username is None:
            raise UsageError("mqtt: a password needs a username")
        if (self.cert is None) != (self.key is None):
            raise UsageError("mqtt: a client certificate needs both cert and key")
        if (self.cert is not None or self.ca is not None) and not self.tls:
            raise UsageError(f"mqtt: {self.url} is plain TCP; certificates need mqtts:// (TLS)")

    @property
    def address(self) -> tuple[str, int]:
        """Host and port."""
        text = self.url if "://" in self.url else f"mqtt://{self.url}"
        u = urlsplit(text)
        if u.scheme not in SCHEMES:
            raise UsageError(f"broker {self.url}: use mqtt://HOST:PORT or mqtts://HOST:PORT")
        try:
            port = u.port
        except ValueError:
            raise UsageError(f"broker {self.url}: the port is not a number") from None
        if not u.hostname:
            raise UsageError(f"broker {self.url}: no host")
        if u.path not in ("", "/") or u.query or u.username or u.password:
            raise UsageError(
                f"broker {self.url}: only a scheme, a host and a port (credentials go in "
                f"{ENV_PREFIX}USERNAME and {ENV_PREFIX}PASSWORD or the config file)"
            )
        return u.hostname, port or SCHEMES[u.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url if "://" in self.url else f"mqtt://{self.url}").scheme in (
            "mqtts",
            "ssl",
        )

    @property
    def secure(self) -> bool:
        """TLS, and the client proves who it is (a password or a certificate)."""
        return self.tls and (self.username is not None or self.cert is not None)

    def describe(self) -> str:
        """The URL and how this client authenticates, for logs (no secret)."""
        how = []
        if self.username is not None:
            how.append(f"user {self.username}")
        if self.cert is not None:
            how.append(f"certificate {self.cert.name}")
        return self.url + (f" ({', '.join(how)})" if how else "")

    def configure(self, client: Any) -> None:
        """Set the credentials and TLS on a paho client."""
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            for what, path in (("ca", self.ca), ("cert", self.cert), ("key", self.key)):
                if path is not None and not path.is_file():
                    raise UsageError(f"mqtt {what} {path}: no such file")
            try:
                client.tls_set(
                    ca_certs=None if self.ca is None else str(self.ca),
                    certfile=None if self.cert is None else str(self.cert),
                    keyfile=None if self.key is None else str(self.key),
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (ssl.SSLError, OSError, ValueError) as e:
                raise UsageError(f"mqtt TLS files: {e}") from None
            client.tls_insecure_set(self.insecure)

    def with_overrides(self, **values: Any) -> BrokerSettings:
        """These settings with every non-None value of ``values`` replacing its field."""
        given = {k: v for k, v in values.items() if v is not None}
        return replace(self, **given) if given else self

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "[mqtt]") -> BrokerSettings:
        """From a config file's table: ``url``, ``username``, ``password`` or
        ``password_file``, ``ca``, ``cert``, ``key``, ``insecure``."""
        known = {f.name for f in fields(cls)} | {"password_file"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"{where}: unknown key(s): {', '.join(unknown)}")
        data = dict(values)
        if "password_file" in data:
            data["password"] = read_secret(Path(data.pop("password_file")), where)
        for k in ("ca", "cert", "key"):
            if data.get(k) is not None:
                data[k] = Path(data[k])
        return cls(**data)

    def with_env(self, env: Mapping[str, str] | None = None) -> BrokerSettings:
        """These settings with the ``EDGEOPS_MQTT_*`` variables applied."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name in ("url", "username", "password"):
            if f"{ENV_PREFIX}{name.upper()}" in env:
                values[name] = env[f"{ENV_PREFIX}{name.upper()}"]
        if f"{ENV_PREFIX}PASSWORD_FILE" in env and "password" not in values:
            path = Path(env[f"{ENV_PREFIX}PASSWORD_FILE"])
            values["password"] = read_secret(path, f"{ENV_PREFIX}PASSWORD_FILE")
        for name in ("ca", "cert", "key"):
            if f"{ENV_PREFIX}{name.upper()}" in env:
                values[name] = Path(env[f"{ENV_PREFIX}{name.upper()}"])
        if f"{ENV_PREFIX}INSECURE" in env:
            values["insecure"] = env[f"{ENV_PREFIX}INSECURE"].lower() in ("1", "true", "yes")
        return replace(self, **values) if values else self


def no_delay(client: Any) -> None:
    """TCP_NODELAY on a connected paho client's socket (call it in ``on_connect``). Neither paho
    nor mosquitto sets it: a small write that follows another before its ACK then waits for
    the peer's delayed ACK, about 40 ms per leg on loopback, most of a command's round trip
    (``benchmarks/commands.py``). The shipped broker config sets it on the broker's side."""
    import contextlib
    import socket

    sock = client.socket()
    if sock is None:
        return
    with contextlib.suppress(OSError, AttributeError):  # not a TCP socket (a Unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def read_secret(path: Path, where: str) -> str:
    """The first line of a secret file (a password, a token)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"{where}: cannot read {path} ({e.strerror or e})") from None
    secret = text.strip().splitlines()[0] if text.strip() else ""
    if not secret:
        raise UsageError(f"{where}: {path} is empty")
    return secret


# What a broker's CONNACK reason codes mean to a user (MQTT 5 and 3.1.1 return codes).
_REFUSALS = {
    "Not authorized": "not authorized: the broker refused these credentials or this client id",
    "Bad user name or password": "bad user name or password",
    "Client identifier not valid": "the broker refused the client id",
    "Server unavailable": "the broker is unavailable",
    "Banned": "this client is banned by the broker",
    "Unsupported protocol version": "the broker does not speak MQTT 5",
}


def connack_problem(reason: Any, settings: BrokerSettings) -> str:
    """One line for a refused connection: what the broker said, and what to check."""
    text = str(getattr(reason, "getName", lambda: reason)())
    said = _REFUSALS.get(text, text.lower())
    hint = (
        f"check {ENV_PREFIX}USERNAME / {ENV_PREFIX}PASSWORD or the client certificate"
        if "authori" in said or "password" in said
        else "check the broker's log"
    )
    return f"broker {settings.describe()} refused the connection: {said} ({hint})"


def connect_problem(error: BaseException, settings: BrokerSettings) -> str:
    """One line for a connection that failed before the broker could answer."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return (
            f"broker {settings.url}: its TLS certificate is not trusted "
            f"({error.verify_message}); give the CA that signed it ({ENV_PREFIX}CA)"
        )
    if isinstance(error, ssl.SSLError):
        return f"broker {settings.url}: TLS failed ({error.reason or error})"
    if isinstance(error, ConnectionRefusedError):
        return f"broker {settings.url}: connection refused (is the broker running on that port?)"
    if isinstance(error, OSError):
        return f"broker {settings.url}: cannot connect ({error.strerror or error})"
    return f"broker {settings.url}: cannot connect ({error})"


def probe(settings: BrokerSettings, timeout: float = 5.0) -> str | None:
    """Why the broker cannot be reached at the transport level (TCP, then TLS with these
    settings), or None when a connection and a handshake succeed. It says nothing of the
    credentials: the broker's CONNACK does (:func:`connack_problem`)."""
    import socket

    host, port = settings.address
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as e:
        return connect_problem(e, settings)
    try:
        if settings.tls:
            ctx = ssl.create_default_context(
                cafile=None if settings.ca is None else str(settings.ca)
            )
            if settings.cert is not None and settings.key is not None:
                ctx.load_cert_chain(str(settings.cert), str(settings.key))
            if settings.insecure:
                ctx.check_hostname = False
            with ctx.wrap_socket(sock, server_hostname=host) as tls:
                tls.do_handshake()
        return None
    except (OSError, ValueError) as e:
        return connect_problem(e, settings)
    finally:
        sock.close()
