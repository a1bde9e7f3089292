"""The device's update policy: what an update command may do here, decided by the device's own
config (``[update]``), not by the command.

- **Versions go forward.** An update to a version at or below the current one is refused; going
  back takes an explicit ``rollback`` command naming the version (the previous model, kept on
  disk). Versions compare as PEP 440 versions (``1.2.0 < 1.10.0``, ``2.0rc1 < 2.0``); a version
  that is not one cannot be ordered and is refused.
- **The same model.** An update to another model's name is refused unless ``allowed_models``
  names it (a device with no model takes any name, or only those listed).
- **Health floors.** The health gate is the stricter of the command's and the device's, field by
  field (:func:`health_gate`): a command can tighten the device's floors, never loosen them; a
  looser value is clamped to the device's and the clamped fields are reported.
- **Allowed hosts.** A bundle is downloaded only from ``allowed_hosts`` (by default the host and
  port of ``service_url``, the service as this device reaches it), redirects included, and never
  from the agent's own local API.

Pure functions over the config and the command's values, apart from :func:`own_addresses`
(which asks the system for this machine's addresses).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from device_agent.config import UpdateConfig
from edgeops.core import wire
from edgeops.core.errors import PolicyRefusal

_DEFAULT_PORTS = {"http": 80, "https": 443}
_HOST = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]*:[0-9a-f:.]*")
"""A host name, an IPv4 address, or an IPv6 address (in brackets in an entry)."""


# --- versions and names -----------------------------------------------------------------------


def version_of(text: str) -> Version:
    """``text`` as a PEP 440 version; :class:`PolicyRefusal` when it is not one."""
    try:
        return Version(text)
    except InvalidVersion:
        raise PolicyRefusal(
            "version",
            f"version {text!r} is not a PEP 440 version; the device cannot tell whether it goes "
            "forward",
        ) from None


def check_forward(current: str | None, new: str) -> None:
    """Refuse ``new`` unless it is above ``current`` (None: no model yet, anything goes)."""
    target = version_of(new)
    if current is None:
        return
    if target <= version_of(current):
        raise PolicyRefusal(
            "downgrade",
            f"version {new} is not above the current {current}; going back takes a signed "
            "rollback naming the version",
        )


def check_model(current: str | None, new: str, allowed: Iterable[str]) -> None:
    """Refuse a model name other than the current one unless ``allowed`` lists it."""
    names = set(allowed)
    if new == current or new in names or (current is None and not names):
        return
    also = f" or {', '.join(sorted(names))}" if names else ""
    raise PolicyRefusal(
        "model",
        f"model {new!r} is not this device's ({current!r}{also}); update.allowed_models may "
        "name it",
    )


# --- the health gate --------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthGate:
    """The health window of one update and what the new model must meet in it."""

    predictions: int | None = None
    """End the window after this many predictions by the new model."""
    seconds: float = 60.0
    """End the window after this many seconds (the first of the two ends it)."""
    max_error_rate: float | None = 0.05
    max_p95_ms: float | None = None
    max_latency_ratio: float | None = None
    """The new model's p95 over the previous model's."""


def _lowest(a: float | None, b: float | None) -> float | None:
    """The stricter of two ceilings (None: no ceiling)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def health_gate(asked: wire.HealthArgs, floors: UpdateConfig) -> tuple[HealthGate, list[str]]:
    """The gate an update runs under, and the names of the command's values that were looser
    than the device's floors (clamped to them).

    Ceilings (error rate, p95, latency ratio) take the lower of the two. The window is never
    shorter than the device's: it waits for at least ``floors.health_predictions`` predictions
    (a command that asks for a time-only window gets that time, at least
    ``floors.health_seconds``) and lasts at most ``max(seconds asked, floors.health_seconds)``.
    """
    clamped: list[str] = []
    ceilings = {
        "max_error_rate": (asked.max_error_rate, floors.max_error_rate),
        "max_p95_ms": (asked.max_p95_ms, floors.max_p95_ms),
        "max_latency_ratio": (asked.max_latency_ratio, floors.max_latency_ratio),
    }
    applied: dict[str, float | None] = {}
    for name, (mine, floor) in ceilings.items():
        applied[name] = _lowest(mine, floor)
        if mine is not None and floor is not None and mine > floor:
            clamped.append(name)
    predictions: int | None
    if asked.predictions is None and asked.seconds is not None:
        predictions = None  # a time-only window, no shorter than the device's
    else:
        predictions = max(asked.predictions or 0, floors.health_predictions)
        if asked.predictions is not None and asked.predictions < floors.health_predictions:
            clamped.append("predictions")
    seconds = max(asked.seconds or 0.0, floors.health_seconds)
    if asked.seconds is not None and asked.seconds < floors.health_seconds:
        clamped.append("seconds")
    gate = HealthGate(
        predictions=predictions,
        seconds=seconds,
        max_error_rate=applied["max_error_rate"],
        max_p95_ms=applied["max_p95_ms"],
        max_latency_ratio=applied["max_latency_ratio"],
    )
    return gate, clamped


# --- download hosts ---------------------------------------------------------------------------


def parse_host(entry: str) -> tuple[str, int | None]:
    """An ``allowed_hosts`` entry as ``(host, port)``: ``HOST`` (None: the default port of the
    URL's scheme), ``HOST:PORT``, ``HOST:*`` (-1: any port), ``[IPV6]:PORT``. ValueError when it
    is not one."""
    problem = ValueError(f"{entry!r} is not HOST, HOST:PORT or HOST:*")
    any_port = entry.endswith(":*")
    text = entry[:-2] if any_port else entry
    u = urllib.parse.urlsplit("//" + text)
    host = (u.hostname or "").lower()
    if not _HOST.fullmatch(host) or u.path or u.query or u.fragment or "@" in text:
        raise problem
    try:
        port = u.port
    except ValueError:
        raise problem from None
    if any_port and port is not None:
        raise problem
    return host, -1 if any_port else port


def allowed_hosts(config: UpdateConfig) -> frozenset[tuple[str, int | None]]:
    """Where bundles may be downloaded from, as :func:`parse_host` pairs: ``allowed_hosts``,
    else ``service_url``'s host and port, else nowhere."""
    if config.allowed_hosts:
        return frozenset(parse_host(e) for e in config.allowed_hosts)
    if config.service_url is None:
        return frozenset()
    u = urllib.parse.urlsplit(config.service_url)
    port = u.port if u.port is not None else _DEFAULT_PORTS.get(u.scheme)
    return frozenset({(str(u.hostname).lower(), port)})


def check_url(
    url: str,
    allowed: frozenset[tuple[str, int | None]],
    own: tuple[set[str], int] | None,
) -> None:
    """Refuse a download from a host not in ``allowed``, or from the agent's own local API
    (``own``: this machine's addresses and names, and the API's port)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme not in _DEFAULT_PORTS or not u.hostname:
        raise PolicyRefusal("host", f"{_clip(url)} is not an http or https URL with a host")
    try:
        port = u.port
    except ValueError:
        raise PolicyRefusal("host", f"{_clip(url)} has a bad port") from None
    host = u.hostname.lower()
    port = _DEFAULT_PORTS[u.scheme] if port is None else port
    if own is not None:
        names, own_port = own
        if port == own_port and (host in names or _resolves_to(host, names)):
            raise PolicyRefusal("local api", f"{_clip(url)} is this agent's own local API; refused")
    default = _DEFAULT_PORTS[u.scheme]
    if not any(h == host and _allows(p, port, default) for h, p in allowed):
        hosts = ", ".join(sorted(_show(h, p) for h, p in allowed)) or "none"
        raise PolicyRefusal(
            "host",
            f"downloads from {host}:{port} are not allowed (allowed: {hosts}; set "
            "update.service_url or update.allowed_hosts)",
        )


def _allows(allowed: int | None, port: int, default: int) -> bool:
    """Whether an entry's port (:func:`parse_host`) allows ``port``."""
    return allowed == -1 or allowed == port or (allowed is None and port == default)


def _show(host: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    if port is None:
        return host
    return f"{host}:*" if port == -1 else f"{host}:{port}"


def own_addresses(http_host: str) -> set[str]:
    """Names and addresses that reach this machine: loopback, its host name, the local API's
    host, and every interface address (from psutil, when installed)."""
    names = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "::", http_host.lower()}
    names.add(socket.gethostname().lower())
    try:
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(a.address.split("%")[0].lower())
    except Exception:  # psutil missing or the platform refuses: loopback and names only
        pass
    return names


def _resolves_to(host: str, names: set[str]) -> bool:
    """Whether ``host`` is a loopback address or resolves to one of ``names`` (or loopback)."""
    try:
        if ipaddress.ip_address(host).is_loopback:
            return True
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # the download will fail to resolve it too
    for info in infos:
        address = str(info[4][0]).split("%")[0].lower()
        try:
            if ipaddress.ip_address(address).is_loopback:
                return True
        except ValueError:
            pass
        if address in names:
            return True
    return False


def _clip(text: str, most: int = 120) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."
