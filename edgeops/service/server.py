"""The central service: fleet telemetry in, drift verdicts and alerts out (``edgeops serve``).

A :class:`Service` owns its database engine, its MQTT client (a persistent MQTT 5 session on a
shared subscription, so several processes split one fleet's load), the REST API and its worker
threads, each supervised (:mod:`edgeops.service.workers`):

- ``store``: the intake (:mod:`edgeops.service.intake`): batches of messages checked, stored in
  one transaction, acknowledged to the broker only after the commit;
- ``evaluate-N``: drift evaluations (:mod:`edgeops.service.evaluation`), off the store loop,
  coalesced per device, so storing keeps the broker's pace;
- ``fleet-drift``: fleet-wide evaluations every ``fleet_interval`` seconds;
- ``rollouts``: staged deployments, stepped every ``rollout_interval`` seconds;
- ``maintenance``: retention purges every ``retention.interval`` seconds;
- ``supervisor``: restarts a loop that died and marks the service failed (``failed``) when one
  dies too often or stalls, so that ``edgeops serve`` exits non-zero instead of pretending.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgeops.core import topics, wire
from edgeops.core.broker import connack_problem, connect_problem, no_delay
from edgeops.core.bundle import Bundle
from edgeops.core.errors import BrokerError, BundleError, EdgeOpsError
from edgeops.core.manifest import Manifest
from edgeops.core.signing import load_verify_keys
from edgeops.service import storage
from edgeops.service.auth import BundleLinks, Tokens
from edgeops.service.baselines import Baselines
from edgeops.service.bundles import BundleStore
from edgeops.service.commands import Addressed, CommandDraft, CommandSigner
from edgeops.service.config import ServiceConfig
from edgeops.service.engine import Engine
from edgeops.service.evaluation import EvaluationQueue, Evaluator
from edgeops.service.intake import Counters, Delivery, Intake, Outcome
from edgeops.service.logs import SafeLog
from edgeops.service.rollout_policy import RolloutPolicy
from edgeops.service.rollouts import Rollouts
from edgeops.service.workers import Workers

log = logging.getLogger(__name__)

__all__ = ["Service"]


class Service:
    """Consumes a fleet's telemetry; see the module docstring."""

    def __init__(
        self,
        config: ServiceConfig,
        *,
        http: bool = True,
        client_id: str | None = None,
        batch_size: int | None = None,
    ):
        if batch_size is not None:
            from dataclasses import replace

            config = replace(config, intake=replace(config.intake, batch_size=batch_size))
        self.config = config
        self.engine_db = storage.connect(config.db)
        self.store = storage.Store(self.engine_db)
        self.tokens = Tokens(self.store)
        """The REST API's tokens (:mod:`edgeops.service.auth`)."""
        self.links = BundleLinks.of(self.store, valid_for=config.bundle_link_seconds)
        """Signs the bundle links of update commands."""
        self._stop = threading.Event()
        self.baselines = Baselines(self.store)
        self.engine = Engine(
            self.store,
            config,
            publish=self._publish_retained,
            deploy=self._deploy_on_alert,
            baselines=self.baselines,
        )
        self.evaluations = EvaluationQueue(keep=config.span_windows)
        self.evaluator = Evaluator(
            self.evaluations, self.engine.evaluate_device, busy=self._backlogged
        )
        self.intake = Intake(
            self.store,
            self.baselines,
            config,
            ack=self._ack,
            on_stored=self.evaluations.put,
            stop=self._stop,
        )
        self.workers = Workers(
            self._stop,
            exit_after=config.intake.stall_exit_seconds - config.intake.stall_seconds,
        )
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
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        c.max_inflight_messages_set(100)
        config.mqtt.configure(c)
        self.client = c
        self.broker_problem: str | None = None
        """Why the last connection attempt failed (None once connected)."""
        self.connect_failures = 0
        self._refused = threading.Event()
        self.bundles = BundleStore(self.store)
        bundle_keys = load_verify_keys(config.trusted_keys) if config.trusted_keys else []
        self.commands = CommandSigner.from_file(
            self.store, config.command_key, bundle_key_ids=[k.key_id for k in bundle_keys]
        )
        self.rollouts = Rollouts(
            self.store, send=self.send_commands, bundle_url=self.bundle_url, owner=self.client_id
        )
        self._beats: dict[str, float] = {}
        self._purged: dict[str, int] = {}
        self._log = SafeLog(log)
        self._supervisor: threading.Thread | None = None

    def _backlogged(self) -> bool:
        return self.intake.depth()[0] >= self.config.intake.batch_size

    @property
    def counters(self) -> Counters:
        """What the intake has seen (``GET /v1/stats``)."""
        return self.intake.counters

    @property
    def failed(self) -> str | None:
        """Why the service cannot go on, or None."""
        return self.workers.failed

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> Service:
        api = None
        if self._use_http:  # built first: bad TLS files are refused before anything runs
            from edgeops.service.api_server import ApiServer

            api = ApiServer(self)
        for path in self.config.bundles:
            self.register_bundle(path)
        host, port = self.config.mqtt.address
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 24 * 3600
        self.client.connect_async(host, port, keepalive=30, clean_start=False, properties=props)
        self.client.loop_start()
        cfg = self.config
        stall = cfg.intake.stall_seconds
        w = self.workers
        w.add("store", self.intake.run, heartbeat=lambda: self.intake.heartbeat, stall_after=stall)
        for i in range(max(cfg.evaluation_workers, 1)):
            w.add(
                f"evaluate-{i}",
                self._evaluate_loop,
                heartbeat=self._heartbeat(self.evaluator.heartbeats, f"evaluate-{i}"),
                stall_after=stall,
            )
        periodic: list[tuple[str, float, Callable[[], None]]] = [
            ("fleet-drift", cfg.fleet_interval, self._fleet_step),
            ("rollouts", cfg.rollout_interval, self.rollouts.tick),
            ("maintenance", cfg.retention.interval, self._maintain),
        ]
        for name, interval, step in periodic:
            w.add(
                name,
                self._every(name, interval, step),
                heartbeat=self._heartbeat(self._beats, name),
                stall_after=interval + stall,
            )
        w.start()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        if api is not None:
            self.http = api
            try:
                api.start()
            except BaseException:
                self.stop()
                raise
            if self.config.insecure_api:
                log.warning(
                    "the REST API is open: no route needs a token (insecure_api); anyone "
                    "who reaches %s may read the fleet, deploy and register bundles",
                    api.address,
                )
            elif self.tokens.count() == 0:
                log.warning(
                    "no REST API token exists: every route but /healthz, /readyz and the "
                    "docs answers 401 until one is made (edgeops tokens create --db DB "
                    "--role admin --name NAME)"
                )
        return self

    def stop(self) -> None:
        self._stop.set()
        self.workers.join(timeout=10)
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        try:
            self.rollouts.release()
        except Exception as e:
            self._log.error("lease", "releasing deployment leases failed (%s); they expire", e)
        if self.http is not None:
            self.http.stop()
        self.client.disconnect()
        self.client.loop_stop()
        self.engine_db.dispose()

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def _heartbeat(beats: dict[str, float], name: str) -> Callable[[], float]:
        return lambda: beats.get(name, time.monotonic())

    def _evaluate_loop(self) -> None:
        self.evaluator.run(self._stop)

    def _every(self, name: str, interval: float, step: Callable[[], None]) -> Callable[[], None]:
        def loop() -> None:
            self._beats[name] = time.monotonic()
            while not self._stop.wait(interval):
                self._beats[name] = time.monotonic()
                try:
                    step()
                except Exception as e:
                    self._log.error(name, "%s failed: %s: %s", name, type(e).__name__, e)
                self._beats[name] = time.monotonic()

        return loop

    def _supervise(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.workers.check()
            except Exception as e:
                self._log.error("supervisor", "supervising the workers failed: %s", e)

    def _fleet_step(self) -> None:
        def beat() -> None:
            self._beats["fleet-drift"] = time.monotonic()

        self.engine.evaluate_fleets(beat=beat)

    def _maintain(self) -> None:
        deleted = self.store.purge(self.config.retention)
        for k, n in deleted.items():
            self._purged[k] = self._purged.get(k, 0) + n
        if any(deleted.values()):
            log.info("retention purged %s", ", ".join(f"{n} {k}" for k, n in deleted.items() if n))

    # --- health -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` and ``/readyz`` report: ``alive`` (no worker failed for good),
        ``ready`` (alive, broker connected, database reachable, no worker stalled) and why."""
        problems = self.workers.check()
        database = self.store.answers()
        messages, queued = self.intake.depth()
        checks = {
            "broker": self.connected.is_set(),
            "database": database,
            "workers": not problems,
        }
        if self.broker_problem is not None:
            problems.append(self.broker_problem)
        return {
            "alive": self.failed is None,
            "ready": self.failed is None and all(checks.values()),
            "checks": checks,
            "problems": problems,
            "last_stored": self.intake.last_stored,
            "lag_s": self.intake.lag(),
            "queue": {"messages": messages, "bytes": queued},
            "evaluation": self.evaluator.stats(),
            "restarts": self.workers.restarted,
        }

    def stats(self) -> dict[str, Any]:
        """``GET /v1/stats``: the intake's counters, the evaluations, retention."""
        out = self.counters.as_dict()
        ev = self.evaluator.stats()
        out["evaluation_errors"] += int(ev["evaluation_errors"] or 0) + self.engine.fleet_errors
        out["evaluation"] = ev
        out["decoded"] = self.intake.decoded.as_dict()
        out["broker"] = {
            "connected": self.connected.is_set(),
            "connect_failures": self.connect_failures,
            "problem": self.broker_problem,
        }
        out["purged"] = dict(self._purged)
        messages, queued = self.intake.depth()
        out["queue"] = {"messages": messages, "bytes": queued, "lag_s": self.intake.lag()}
        return out

    # --- bundles and deployments --------------------------------------------------------------

    def register_bundle(self, source: Path | bytes) -> Manifest:
        """Verify a bundle, store its manifest (baseline, evaluation) for drift and its bytes
        for devices to download in a deployment."""
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
            try:
                with Bundle.open(Path(f.name)) as b:
                    b.verify(keys, allow_unsigned=self.config.allow_unsigned)
                    manifest, info = b.manifest, b.info
            except EdgeOpsError as e:  # name what was given, not the copy
                e.message = e.message.replace(
                    f.name, str(source) if isinstance(source, Path) else "the bundle"
                )
                raise
        self.bundles.add(data, info, hashlib.sha256(data).hexdigest())
        self.store.models.add(manifest, info)
        self.baselines.forget_missing(info.name, info.version)
        log.info("registered %s %s", info.name, info.version)
        return info

    def public_url(self) -> str:
        """The REST API's address as devices reach it (``public_url``, else where it listens)."""
        base = self.config.public_url
        if base is None:
            if self.http is None:
                raise EdgeOpsError("deployments need the REST API (or public_url) to serve bundles")
            base = self.http.address
        return base.rstrip("/")

    def bundle_url(self, sha256: str) -> str:
        """Where devices download a registered bundle: a link signed for ``sha256`` that
        expires ``bundle_link_seconds`` from now (a resent command carries a new one)."""
        return f"{self.public_url()}/v1/bundles/{sha256}?{self.links.query(sha256)}"

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
        name, version = self.store.models.resolve(bundle)
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

    def wait_connected(self, timeout: float) -> None:
        """Wait for the first connection; :class:`BrokerError` when the broker refused it. An
        unreachable broker is retried (logged, counted): this returns after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.1):
            if self._refused.is_set():
                raise BrokerError(self.broker_problem or "the broker refused the connection")
            if time.monotonic() > deadline:
                return

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.connect_failures += 1
            self.broker_problem = connack_problem(reason, self.config.mqtt)
            self._refused.set()
            self._log.error("connect", "%s; retrying", self.broker_problem)
            return
        self.broker_problem = None
        self._refused.clear()
        no_delay(client)
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

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the socket or TLS error is at hand
        self.connect_failures += 1
        error = sys.exc_info()[1]
        self.broker_problem = (
            connect_problem(error, self.config.mqtt)
            if error is not None
            else f"broker {self.config.mqtt.url}: the connection failed"
        )
        self._log.warning("connect", "%s; retrying", self.broker_problem)

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self.connected.clear()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.intake.put(Delivery(msg.topic, bytes(msg.payload), time.time(), msg.mid, msg.qos))

    def _ack(self, batch: Sequence[Delivery]) -> None:
        for d in batch:
            if d.qos > 0:
                self.client.ack(d.mid, d.qos)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1, retain=True)

    def send_commands(self, batch: Sequence[Addressed]) -> list[wire.Command]:
        """Number, sign and publish commands (QoS 1); the commands as sent."""
        sent = []
        for topic, cmd in self.commands.issue(batch):
            self.client.publish(topic, wire.encode(cmd), qos=1)
            sent.append(cmd)
        return sent

    def command_device(
        self,
        fleet: str,
        device: str,
        args: wire.PingArgs | wire.SetConfigArgs,
        *,
        valid_for: float,
    ) -> wire.Command:
        """Number, sign and send one command to one device, valid for ``valid_for`` seconds (a
        device offline longer refuses it as expired, rather than act on a stale request); the
        command as sent. Updates and rollbacks are not sent this way: a deployment sends them
        and watches their outcome."""
        now = time.time()
        draft = CommandDraft(f"c-{uuid.uuid4().hex}", args, now, now + valid_for)
        return self.send_commands([Addressed(fleet, device, draft)])[0]

    # --- in-process intake (tests, benchmarks) ------------------------------------------------

    def handle(self, topic: str, payload: bytes) -> Outcome:
        """Check, store and evaluate one message in this thread (a batch of one)."""
        return self.handle_batch([(topic, payload)])

    def handle_batch(self, messages: Sequence[tuple[str, bytes]]) -> Outcome:
        """Check and store ``(topic, payload)`` messages as one batch, then run the drift
        evaluations they queued, all in this thread."""
        now = time.time()
        outcome = self.intake.process([Delivery(t, p, now) for t, p in messages])
        self.evaluator.drain()
        return outcome
