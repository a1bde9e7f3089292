"""``select.select`` on top of ``poll()``, for paho-mqtt in a process with many descriptors.

paho-mqtt's network loop waits with ``select.select``, which on Linux refuses any descriptor
numbered 1024 or more (``FD_SETSIZE``); paho swallows the ``ValueError`` as a lost connection and
reconnects forever (paho.mqtt.python issue #183). A real device's agent holds a handful of
descriptors, but a simulated fleet holds about seven per device (socket, wake-up socket pair,
SQLite outbox, its WAL and shared memory), so past some 140 devices new MQTT sockets are numbered
above 1023 and those devices never connect.

:func:`install` gives paho's module a stand-in ``select`` whose ``select()`` has the same
contract (the same objects back, the same ``TypeError``/``ValueError``/``OSError`` for a missing,
negative or closed descriptor) without the ceiling. It changes nothing else and is idempotent;
it is a no-op where ``poll()`` does not exist.
"""

from __future__ import annotations

import errno
import math
import select
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_READ = select.POLLIN | select.POLLHUP | select.POLLERR if hasattr(select, "poll") else 0
_WRITE = select.POLLOUT | select.POLLHUP | select.POLLERR if hasattr(select, "poll") else 0
_EXCEPT = select.POLLPRI if hasattr(select, "poll") else 0


def _fileno(obj: Any) -> int:
    if isinstance(obj, int):
        fd = obj
    else:
        try:
            fd = int(obj.fileno())
        except AttributeError:
            raise TypeError("argument must be an int, or have a fileno() method.") from None
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def poll_select(
    rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
) -> tuple[list[Any], list[Any], list[Any]]:
    """What ``select.select(rlist, wlist, xlist, timeout)`` returns, waiting with ``poll()``."""
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be non-negative")
    wanted: dict[int, int] = {}
    lists = ((rlist, select.POLLIN), (wlist, select.POLLOUT), (xlist, select.POLLPRI))
    fds = [[_fileno(o) for o in objs] for objs, _ in lists]
    for (_, mask), numbers in zip(lists, fds, strict=True):
        for fd in numbers:
            wanted[fd] = wanted.get(fd, 0) | mask
    poller = select.poll()
    for fd, mask in wanted.items():
        poller.register(fd, mask)
    ms = None if timeout is None else math.ceil(timeout * 1000)
    events = dict(poller.poll(ms))
    if any(ev & select.POLLNVAL for ev in events.values()):
        raise OSError(errno.EBADF, "Bad file descriptor")
    return tuple(  # type: ignore[return-value]
        [o for o, fd in zip(objs, numbers, strict=True) if events.get(fd, 0) & ready]
        for (objs, _), numbers, ready in zip(lists, fds, (_READ, _WRITE, _EXCEPT), strict=True)
    )


class _SelectModule(ModuleType):
    """The ``select`` module, with :func:`poll_select` as its ``select``."""

    def __init__(self) -> None:
        super().__init__("select", select.__doc__)
        self.__dict__.update({k: v for k, v in vars(select).items() if not k.startswith("__")})
        self.select = poll_select


def install() -> bool:
    """Make paho-mqtt's network loop wait with ``poll()``; False where there is no poll."""
    if not hasattr(select, "poll"):
        return False
    import paho.mqtt.client as paho_client

    if not isinstance(vars(paho_client).get("select"), _SelectModule):
        vars(paho_client)["select"] = _SelectModule()
    return True
