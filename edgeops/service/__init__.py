"""The central service: fleet telemetry in, drift verdicts and alerts out (``edgeops serve``).

A :class:`Service` owns its database engine, its MQTT client (a persistent MQTT 5 session on a
shared subscription, so several processes split one fleet's load), a worker thread that stores
messages and evaluates drift, a timer thread for fleet-wide evaluations, and the REST API.

The worker takes the queued messages in batches (up to ``batch_size``, as many as are waiting)
and stores each batch in one transaction. Its messages are acknowledged to the broker only after
that commit (paho's manual ack), so a service crash loses nothing the broker delivered; a
redelivery, in a later batch or the same one, is dropped by the database's unique ``(fleet,
device, boot, seq)`` key and counted as a duplicate. Drift is then evaluated once per device
that got new windows in the batch, at its newest one (see :mod:`edgeops.service.engine`): a
backlog costs one evaluation per device and batch, not one per window. A crash between the ack
and the evaluation skips that evaluation; the device's next window evaluates its span again.
"""

from __future__ import annotations

import functools
import logging
import queue
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeops import topics, wire
from edgeops.bundle import Bundle
from edgeops.errors import BundleError, EdgeOpsError, first_line
from edgeops.rollout import RolloutPolicy
from edgeops.service import db
from edgeops.service.bundles import BundleStore
from edgeops.service.config import ServiceConfig
from edgeops.service.engine import Engine
from edgeops.service.rollouts import Rollouts
from edgeops.signing import load_verify_keys

log = logging.getLogger(__name__)

__all__ = ["Service", "ServiceConfig"]

BATCH_SIZE = 500
"""The most queued messages the worker stores in one transaction."""


@dataclass
class Counters:
    """What this process has seen, for ``GET /v1/stats``."""

    received: int = 0
    stored_windows: int = 0
    stored_events: int = 0
    statuses: int = 0
    duplicates: int = 0
    mismatched_topic: int = 0
    evaluation_errors: int = 0
    storage_retries: int = 0
    wire: wire.WireStats = field(default_factory=wire.WireStats)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "wire"}
        out["rejected"] = self.wire.as_dict()
        return out


class Service:
    """Consumes a fleet's telemetry; see the module docstring."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        http: bool = True,
        client_id: str | None = None,
        batch_size: int = BATCH_SIZE,
    ):
        self.config = config
        self.engine_db = db.connect(config.db)
        self.store = db.Store(self.engine_db)
        self.counters = Counters()
        self.engine = Engine(
            self.store, config, publish=self._publish_retained, deploy=self._deploy_on_alert
        )
        self.batch_size = batch_size
        self._queue: queue.Queue[mqtt.MQTTMessage | None] = queue.Queue(maxsize=10_000)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._use_http = http
        self.http: Any = None
        self.connected = threading.Event()
        self.client_id = (
            client_id
            or config.client_id
            or f"edgeops-service-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        )
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        c.max_inflight_messages_set(100)
        self.client = c
        self.bundles = BundleStore(self.store)
        self.rollouts = Rollouts(
            self.store, send=self._send_command, bundle_url=self.bundle_url, owner=self.client_id
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Service:
        for path in self.config.bundles:
            self.register_bundle(path)
        host, port = self.config.broker_host_port
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 24 * 3600
        self.client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        loops = (
            (self._work, "store"),
            (self._fleet_loop, "fleet-drift"),
            (self._rollout_loop, "rollouts"),
        )
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        if self._use_http:
            from edgeops.service.api import ApiServer

            self.http = ApiServer(self)
            self.http.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        try:
            self.rollouts.release()
        except Exception:
            log.exception("releasing deployment leases failed; they expire on their own")
        if self.http is not None:
            self.http.stop()
        self.client.disconnect()
        self.client.loop_stop()
        self.engine_db.dispose()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def register_bundle(self, source: Path | bytes) -> dict[str, Any]:
        """Verify a bundle, store its manifest (baseline, evaluation) for drift and its bytes
        for devices to download in a deployment."""
        import hashlib
        import tempfile

        keys = load_verify_keys(self.config.trusted_keys) if self.config.trusted_keys else []
        if isinstance(source, Path):
            try:
                data = source.read_bytes()
            except OSError as e:
                raise BundleError(f"{source}: {e.strerror or e}") from None
        else:
            data = source
        with tempfile.NamedTemporaryFile(suffix=".bundle") as f:
            f.write(data)
            f.flush()
            with Bundle.open(Path(f.name)) as b:
                b.verify(keys, allow_unsigned=self.config.allow_unsigned)
                manifest = b.manifest
        self.bundles.add(data, manifest, hashlib.sha256(data).hexdigest())
        self.store.add_model(manifest)
        log.info("registered %s %s", manifest["name"], manifest["version"])
        return manifest

    def public_url(self) -> str:
        """The REST API's address as devices reach it (``public_url``, else where it listens)."""
        base = self.config.public_url
        if base is None:
            if self.http is None:
                raise EdgeOpsError("deployments need the REST API (or public_url) to serve bundles")
            base = self.http.address
        return base.rstrip("/")

    def bundle_url(self, sha256: str) -> str:
        """Where devices download a registered bundle."""
        return f"{self.public_url()}/v1/bundles/{sha256}"

    def deploy(
        self,
        bundle: str,
        fleet: str,
        *,
        devices: Sequence[str] = (),
        selector: dict[str, str] | None = None,
        policy: RolloutPolicy | None = None,
        trigger: str = "request",
        once: bool = False,
    ) -> dict[str, Any]:
        """Start a staged deployment of a registered bundle (``NAME-VERSION`` or
        ``NAME:VERSION``); its status."""
        name, version = self.store.resolve_model(bundle)
        self.public_url()  # devices must be able to download the bundle: fail now, not later
        status = self.rollouts.create(
            name,
            version,
            fleet,
            devices=devices,
            selector=selector,
            policy=policy,
            trigger=trigger,
            once=once,
        )
        self.rollouts.tick(only=status["id"])
        return status

    def _deploy_on_alert(self, bundle: str, fleet: str, alert: dict[str, Any]) -> None:
        """The drift policy's ``deploy`` action: one deployment per bundle and fleet."""
        try:
            status = self.deploy(
                bundle,
                fleet,
                policy=self.config.rollout,
                trigger=f"alert {alert['kind']} {alert['feature']} on {alert['device']}",
                once=True,
            )
            log.warning("alert action: deployment %s of %s to %s", status["id"], bundle, fleet)
        except EdgeOpsError as e:
            log.error("alert action: deploy %s to %s failed: %s", bundle, fleet, e)

    # --- MQTT ---------------------------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection: %s", reason)
            return
        fleet, group = self.config.fleet, self.config.group
        subs = [
            (topics.shared(group, topics.device_filter(fleet, kind="telemetry")), 1),
            (topics.shared(group, topics.device_filter(fleet, kind="events")), 1),
            # Retained presence is not delivered to shared subscriptions: every process takes it.
            (topics.device_filter(fleet, kind="status"), 1),
        ]
        client.subscribe(subs)
        self.connected.set()
        log.info("service connected (session present: %s)", flags.session_present)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(msg)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True)

    def _send_command(self, fleet: str, device: str, cmd: wire.Command) -> None:
        self.client.publish(topics.cmd(fleet, device), wire.encode(cmd), qos=1)

    # --- storing ------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stopping = False
            while len(batch) < self.batch_size:
                try:
                    msg = self._queue.get_nowait()
                except queue.Empty:
                    break
                if msg is None:
                    stopping = True
                    break
                batch.append(msg)
            self._store_batch(batch)
            if stopping:
                return

    def _store_batch(self, batch: list[mqtt.MQTTMessage]) -> None:
        """Store and ack a batch, retrying until it is stored: unacked, its messages would
        wait for a reconnect to be sent again, so a transient failure (a deadlock between two
        processes, a database restart) is retried here, with back-off, until the service
        stops."""
        messages = [(m.topic, bytes(m.payload)) for m in batch]
        delay = 0.05
        while True:
            try:
                self.handle_batch(messages, on_stored=functools.partial(self._ack, batch))
                return
            except Exception as e:
                self.counters.storage_retries += 1
                if delay >= 1.0:
                    log.exception("storing a batch of %d messages failed; retrying", len(batch))
                else:
                    log.warning("storing a batch failed (%s); retrying", first_line(e))
                if self._stop.wait(delay):
                    return  # not acked: the broker sends them again to the next session
                delay = min(delay * 2, 5.0)

    def _ack(self, batch: list[mqtt.MQTTMessage]) -> None:
        for m in batch:
            if m.qos > 0:
                self.client.ack(m.mid, m.qos)

    def handle(self, topic: str, payload: bytes) -> None:
        """Decode, check, store and evaluate one message (a batch of one)."""
        self.handle_batch([(topic, payload)])

    def handle_batch(
        self,
        messages: Sequence[tuple[str, bytes]],
        *,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        """Decode and check ``(topic, payload)`` messages, store them in one transaction, call
        ``on_stored`` (the worker acks there), then evaluate drift once per device that got new
        windows. Bad messages are counted, never raised; a storage failure raises (nothing of
        the batch is stored); an evaluation failure is counted and logged."""
        new_windows: list[db.NewWindow] = []
        new_events: list[tuple[str, wire.Event]] = []
        statuses: list[tuple[str, wire.Status]] = []
        for topic, payload in messages:
            self.counters.received += 1
            checked = self._check(topic, payload)
            if checked is None:
                continue
            fleet, m = checked
            if isinstance(m, wire.Status):
                statuses.append((fleet, m))
            elif isinstance(m, wire.Event):
                new_events.append((fleet, m))
            elif isinstance(m, wire.Telemetry):
                new_windows.append(db.NewWindow(fleet, m, payload))
        if new_windows or new_events or statuses:
            stored = self.store.add_batch(new_windows, new_events, statuses)
            self.counters.statuses += len(statuses)
            self.counters.stored_events += stored.events
            self.counters.stored_windows += len(stored.windows)
            self.counters.duplicates += stored.duplicates
        else:
            stored = db.StoredBatch([], 0, 0)
        if on_stored is not None:
            on_stored()
        self._evaluate(stored.windows)

    def _check(self, topic: str, payload: bytes) -> tuple[str, wire.Message] | None:
        """The fleet and the decoded message, or None (counted) when it is not acceptable."""
        try:
            t = topics.parse(topic)
        except ValueError as e:
            log.warning("ignored a message on %s: %s", topic, e)
            self.counters.mismatched_topic += 1
            return None
        m: wire.Message | None
        if t.kind == "telemetry":
            m = self.counters.wire.decode(payload, wire.Telemetry, topic=topic)
        elif t.kind == "events":
            m = self.counters.wire.decode(payload, wire.Event, topic=topic)
        elif t.kind == "status":
            m = self.counters.wire.decode(payload, wire.Status, topic=topic)
        else:
            self.counters.mismatched_topic += 1
            return None
        if m is None:
            return None
        if getattr(m, "device", None) != t.device:
            log.warning("message on %s names device %r; ignored", topic, getattr(m, "device", None))
            self.counters.mismatched_topic += 1
            return None
        return t.fleet, m

    def _evaluate(self, stored: Sequence[db.StoredWindow]) -> None:
        """Evaluate each (fleet, device, model) once, at its newest window of the batch."""
        newest: dict[tuple[str, str, str, str], db.StoredWindow] = {}
        for w in stored:  # oldest id first: the last one of a device wins
            m = w.telemetry.model
            if m is not None:
                newest[(w.fleet, w.device, m.name, m.version)] = w
        known = {w.id: w for w in stored}
        for w in newest.values():
            try:
                self.engine.evaluate_device(w, known)
            except (EdgeOpsError, ValueError, KeyError) as e:
                self.counters.evaluation_errors += 1
                log.error("drift evaluation for %s failed: %s", w.device, e)
            except Exception:  # the batch is stored and acked: count, log, go on
                self.counters.evaluation_errors += 1
                log.exception("drift evaluation for %s failed", w.device)

    def _rollout_loop(self) -> None:
        while not self._stop.wait(self.config.rollout_interval):
            try:
                self.rollouts.tick()
            except Exception:
                log.exception("stepping deployments failed")

    def _fleet_loop(self) -> None:
        while not self._stop.wait(self.config.fleet_interval):
            try:
                self.engine.evaluate_fleets()
            except Exception:
                self.counters.evaluation_errors += 1
                log.exception("fleet drift evaluation failed")
