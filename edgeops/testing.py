"""Testing helpers for fleets: a real mosquitto broker and a telemetry collector.

``Mosquitto`` starts the ``mosquitto`` binary on a free port with a generated config (persistence
on, so sessions and queued messages survive :meth:`Mosquitto.restart`); :class:`Collector`
subscribes to a fleet's device topics with a persistent MQTT 5 session and keeps every decoded
message, dropping QoS 1 duplicates by ``(device, boot, seq)``.

    with Mosquitto() as broker, Collector(broker.port) as seen:
        ...  # run agents against broker.port
        seen.wait_for(lambda c: len(c.telemetry) >= 3, timeout=30)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgeops import topics, wire

MOSQUITTO_PATHS = (
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/opt/homebrew/sbin/mosquitto",
)


def find_mosquitto() -> str | None:
    """The mosquitto binary, or None when it is not installed."""
    return shutil.which("mosquitto") or next(
        (p for p in MOSQUITTO_PATHS if Path(p).is_file()), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Mosquitto:
    """A mosquitto process on 127.0.0.1 and a free port, with its own config and data dir."""

    def __init__(self, *, port: int | None = None, directory: Path | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.port = port or free_port()
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="mosquitto-")
        self.directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config = self.directory / "mosquitto.conf"
        self.config.write_text(
            "\n".join(
                [
                    f"listener {self.port} 127.0.0.1",
                    "allow_anonymous true",
                    "persistence true",
                    f"persistence_location {self.directory}/",
                    "autosave_interval 1",
                    "max_queued_messages 100000",
                    "max_inflight_messages 100",
                    f"log_dest file {self.directory}/mosquitto.log",
                    "",
                ]
            )
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Mosquitto:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited at start: {err.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on port {self.port} within {timeout} s")

    def stop(self) -> None:
        """Stop the broker (SIGTERM: it saves sessions and queued messages first)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


class Collector:
    """Collects the device messages of a fleet from a broker, deduplicated, in arrival order."""

    def __init__(
        self,
        port: int,
        *,
        fleet: str = "+",
        host: str = "127.0.0.1",
        client_id: str = "edgeops-test-collector",
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
        self._dedup = wire.Dedup()
        self._lock = threading.RLock()  # conditions given to wait_for may call events_of
        self._changed = threading.Condition(self._lock)
        kinds: tuple[topics.Kind, ...] = ("telemetry", "events", "status")
        self._filters = [topics.device_filter(fleet, kind=k) for k in kinds]
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=1, max_delay=2)
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 3600
        self._connected = threading.Event()
        c.connect_async(host, port, keepalive=10, clean_start=False, properties=props)
        self.client = c

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        for f in self._filters:
            client.subscribe(f, qos=1)
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        try:
            m = wire.decode(msg.payload)
        except wire.WireError as e:
            with self._changed:
                self.rejected.append(str(e))
                self._changed.notify_all()
            return
        with self._changed:
            if isinstance(m, wire.Status):
                self.status.append(m)  # retained presence: keep every one, no dedup
            elif isinstance(m, wire.Command):
                self.rejected.append(f"a command on {msg.topic}")
            elif self._dedup.seen(m):
                self.duplicates += 1
            elif isinstance(m, wire.Telemetry):
                self.telemetry.append(m)
            elif isinstance(m, wire.Event):
                self.events.append(m)
            self._changed.notify_all()

    def start(self, timeout: float = 10.0) -> Collector:
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise RuntimeError("the collector could not connect to the broker")
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
