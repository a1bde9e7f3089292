"""The agent's MQTT link: paho-mqtt 2.x, MQTT 5, a persistent session and the disk outbox.

- Connects with clean start off and a session expiry, so the broker keeps the subscription to
  ``…/cmd`` and queues commands while the device is away; reconnects by itself with back-off.
- Sets a retained last will (offline status) and publishes a retained birth (online status) on
  every connect; a clean stop publishes the offline status itself.
- Telemetry and events are never handed to paho directly: they go to the :class:`Outbox`, and a
  flusher thread publishes pending rows while connected and deletes a row only once its
  ``MQTTMessageInfo`` reports the broker's acknowledgement (PUBACK). A row whose acknowledgement
  does not come within ``resend_after`` seconds of being (re)sent while connected is sent again.
  Consumers drop the duplicates this can make by ``(device, boot, seq)``.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from device_agent.config import MqttConfig
from device_agent.outbox import Outbox
from edgeops.core.broker import no_delay
from edgeops.core.errors import UsageError

log = logging.getLogger(__name__)


class MqttLink:
    """Owns the paho client and the flusher thread; start with :meth:`start`, stop with
    :meth:`stop`."""

    def __init__(
        self,
        config: MqttConfig,
        outbox: Outbox,
        *,
        client_id: str,
        command_topic: str,
        status_topic: str,
        birth: Callable[[], bytes],
        will: bytes,
        on_command: Callable[[bytes], None],
        resend_after: float = 30.0,
    ) -> None:
        self.config = config
        self.outbox = outbox
        self.command_topic = command_topic
        self.status_topic = status_topic
        self._birth = birth
        self._on_command = on_command
        self.resend_after = resend_after
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # the broker acknowledged the command subscription
        self._subscribe_mid: int | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._in_flight: dict[int, tuple[mqtt.MQTTMessageInfo, float]] = {}
        self._thread: threading.Thread | None = None
        self.connects = 0
        self.problem: str | None = None
        """Why the last connection attempt failed (None once connected)."""

        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
        )
        c.will_set(status_topic, will, qos=1, retain=True)
        if config.username is not None:
            c.username_pw_set(config.username, config.password)
        elif config.password is not None:
            raise UsageError("config: mqtt.password needs mqtt.username")
        if config.tls is not None:
            t = config.tls
            c.tls_set(
                ca_certs=None if t.ca is None else str(t.ca),
                certfile=None if t.cert is None else str(t.cert),
                keyfile=None if t.key is None else str(t.key),
                cert_reqs=ssl.CERT_REQUIRED,
            )
            c.tls_insecure_set(t.insecure)
        c.max_inflight_messages_set(max(config.max_in_flight, 1))
        c.reconnect_delay_set(min_delay=1, max_delay=30)
        c.on_connect = self._handle_connect
        c.on_connect_fail = self._handle_connect_fail
        c.on_disconnect = self._handle_disconnect
        c.on_message = self._handle_message
        c.on_publish = self._handle_publish
        c.on_subscribe = self._handle_subscribe
        self.client = c

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.config.session_expiry
        self.client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive,
            clean_start=False,
            properties=props,
        )
        self.client.loop_start()
        self._thread = threading.Thread(target=self._flush_loop, name="outbox-flusher", daemon=True)
        self._thread.start()

    def stop(self, *, offline: bytes | None = None, drain_timeout: float = 5.0) -> None:
        """Drain the outbox for up to ``drain_timeout`` s, publish ``offline``, disconnect."""
        deadline = time.monotonic() + drain_timeout
        while self._connected.is_set() and time.monotonic() < deadline:
            if self.outbox.stats().pending == 0:
                break
            self._wake.set()
            time.sleep(0.05)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if offline is not None and self._connected.is_set():
            info = self.client.publish(self.status_topic, offline, qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=max(deadline - time.monotonic(), 1.0))
            except (RuntimeError, ValueError) as e:
                log.warning("offline status not confirmed: %s", e)
        self._connected.clear()
        self.client.disconnect()
        self.client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected *and* subscribed to commands (a command published before the
        broker has the subscription would not reach a device on its first connect)."""
        deadline = time.monotonic() + timeout
        if not self._connected.wait(timeout):
            return False
        return self._subscribed.wait(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        """Tell the flusher that the outbox has something new."""
        self._wake.set()

    def publish_status(self, payload: bytes) -> None:
        """Publish a retained status now (if connected); the next connect publishes the birth."""
        if self._connected.is_set():
            self.client.publish(self.status_topic, payload, qos=1, retain=True)

    # --- paho callbacks (network thread) ------------------------------------------------------

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.problem = f"the broker refused the connection: {reason}"
            log.warning("%s", self.problem)
            return
        self.problem = None
        no_delay(client)
        self.connects += 1
        log.info(
            "connected to %s:%s (session present: %s)",
            self.config.host,
            self.config.port,
            flags.session_present,
        )
        self._subscribed.clear()
        _, self._subscribe_mid = client.subscribe(self.command_topic, qos=1)
        client.publish(self.status_topic, self._birth(), qos=1, retain=True)
        now = time.monotonic()
        self._in_flight = {k: (info, now) for k, (info, _) in self._in_flight.items()}
        self._connected.set()
        self._wake.set()

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the TLS or socket error is at hand.
        self.problem = f"cannot connect to {self.config.host}:{self.config.port}: " + str(
            sys.exc_info()[1]
        )
        log.warning("%s", self.problem)

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._connected.is_set():
            log.warning("disconnected from the broker: %s", reason)
        elif not self._stopping.is_set():
            log.warning("the broker closed the connection before accepting it: %s", reason)
        self._connected.clear()
        self._subscribed.clear()

    def _handle_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any
    ) -> None:
        if mid != self._subscribe_mid:
            return
        if any(getattr(r, "is_failure", False) for r in reasons):
            log.error("the broker refused the command subscription: %s", reasons)
            return
        self._subscribed.set()

    def _handle_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._on_command(bytes(msg.payload))
        except Exception:  # a bad command must never kill the network thread
            log.exception("command handler failed")

    def _handle_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any
    ) -> None:
        self._wake.set()

    # --- flusher ------------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(timeout=1.0)
            self._wake.clear()
            try:
                self._settle()
                if self._connected.is_set():
                    self._send_pending()
            except Exception:
                log.exception("outbox flush failed; retrying")
                time.sleep(1.0)
        self._settle()

    def _settle(self) -> None:
        """Delete acknowledged rows; forget rows whose acknowledgement is overdue."""
        now = time.monotonic()
        for row, (info, sent) in list(self._in_flight.items()):
            if info.is_published():
                self.outbox.ack(row)
                del self._in_flight[row]
            elif self._connected.is_set() and now - sent > self.resend_after:
                del self._in_flight[row]

    def _send_pending(self) -> None:
        room = self.config.max_in_flight - len(self._in_flight)
        if room <= 0:
            return
        items = self.outbox.pending(limit=room, exclude=set(self._in_flight))
        sent = []
        for item in items:
            if not self._connected.is_set():
                break
            info = self.client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            self._in_flight[item.id] = (info, time.monotonic())
            sent.append(item.id)
        if sent:
            self.outbox.mark_attempt(sent)
