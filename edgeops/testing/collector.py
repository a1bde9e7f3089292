"""A telemetry collector: a persistent MQTT 5 session on a fleet's device topics that keeps
every decoded message, and a check of the windows' order in time."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from edgeops.core import topics, wire
from edgeops.core.errors import WireError
from edgeops.testing.pki import TestPki


class Collector:
    """Collects the device messages of a fleet from a broker, deduplicated, in arrival order.

    For a TLS broker pass its :class:`TestPki`: the collector trusts ``tls.ca`` and presents
    ``tls.client_cert``. ``username`` and ``password`` are for brokers with a password file.
    """

    def __init__(
        self,
        port: int,
        *,
        fleet: str = "+",
        host: str = "127.0.0.1",
        client_id: str = "edgeops-test-collector",
        tls: TestPki | None = None,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.telemetry: list[wire.Telemetry] = []
        self.events: list[wire.Event] = []
        self.status: list[wire.Status] = []
        self.duplicates = 0
        self.rejected: list[str] = []
        self.refused: str | None = None
        """The broker's reason when it refused the last connection attempt."""
        self._dedup = wire.Dedup()
        self._lock = threading.RLock()  # conditions given to wait_for may call events_of
        self._changed = threading.Condition(self._lock)
        kinds: tuple[topics.Kind, ...] = ("telemetry", "events", "status")
        self._filters = [topics.device_filter(fleet, kind=k) for k in kinds]
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        if username is not None:
            c.username_pw_set(username, password)
        if tls is not None:
            c.tls_set(
                ca_certs=str(tls.ca), certfile=str(tls.client_cert), keyfile=str(tls.client_key)
            )
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self._connected = threading.Event()
        c.connect_async(host, port, keepalive=10, clean_start=False, properties=props)
        self.client = c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.refused = str(reason)
            return
        for f in self._filters:
            client.subscribe(f, qos=1)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            m = wire.decode(msg.payload)
        except WireError as e:
            with self._changed:
                self.rejected.append(str(e))
                self._changed.notify_all()
            return
        with self._changed:
            if isinstance(m, wire.Status):
                self.status.append(m)  # retained presence: keep every one, no dedup
            elif not isinstance(m, wire.Telemetry | wire.Event):  # commands, alerts: not devices'
                self.rejected.append(f"a {type(m).__name__.lower()} on {msg.topic}")
            elif self._dedup.seen(m):
                self.duplicates += 1
            elif isinstance(m, wire.Telemetry):
                self.telemetry.append(m)
            else:
                self.events.append(m)
            self._changed.notify_all()

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            why = f" (refused: {self.refused})" if self.refused else ""
            raise RuntimeError(f"the collector could not connect to the broker{why}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, condition: Callable[[Collector], bool], timeout: float = 30.0) -> bool:
        """Wait until ``condition(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, 0.5))
        return True

    def events_of(self, kind: str) -> list[wire.Event]:
        with self._lock:
            return [e for e in self.events if e.kind == kind]


class WindowTimes(Protocol):
    """A telemetry window as stored or received: :class:`edgeops.core.wire.Telemetry` is one."""

    @property
    def device(self) -> str: ...
    @property
    def boot(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def window_start(self) -> float: ...
    @property
    def window_end(self) -> float: ...


def window_order_problems(windows: Iterable[WindowTimes]) -> list[str]:
    """What breaks the order of devices' windows, one line each (empty when nothing does).

    Per device and boot, in seq order, every window must end no earlier than it starts and start
    no earlier than the one before it ended: times never decrease and windows never overlap.
    """
    runs: dict[tuple[str, str], list[WindowTimes]] = {}
    for w in windows:
        runs.setdefault((w.device, w.boot), []).append(w)
    problems = []
    for (device, boot), ws in sorted(runs.items()):
        ws.sort(key=lambda w: w.seq)
        for w in ws:
            if not w.window_end >= w.window_start:
                problems.append(
                    f"{device} boot {boot}: seq {w.seq} ends at {w.window_end:.6f}, "
                    f"before it starts at {w.window_start:.6f}"
                )
        for a, b in itertools.pairwise(ws):
            if not b.window_start >= a.window_end:
                problems.append(
                    f"{device} boot {boot}: seq {a.seq} spans [{a.window_start:.6f}, "
                    f"{a.window_end:.6f}] and seq {b.seq} starts at {b.window_start:.6f}"
                )
    return problems
