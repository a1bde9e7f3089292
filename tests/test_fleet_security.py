"""The shipped broker configuration (``deploy/mosquitto.conf`` and ``deploy/mosquitto.acl``) run by
a real mosquitto with a throwaway CA: what each identity can and cannot do, over TLS with
passwords and over mTLS with client certificates; and the service and its clients reaching it."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeops.core import topics, wire
from edgeops.core.broker import BrokerSettings, probe
from edgeops.testing import SERVICE_ACCOUNT, FleetBroker, find_mosquitto, make_test_pki

pytestmark = pytest.mark.skipif(find_mosquitto() is None, reason="mosquitto is not installed")

FLEET = "secure"
DEVICES = {"dev-1": "pw-one", "dev-2": "pw-two"}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetBroker]:
    with FleetBroker(tmp_path_factory.mktemp("fleet-broker"), DEVICES) as b:
        yield b


class Client:
    """A paho client that records its CONNACK, SUBACKs, PUBACKs and messages."""

    def __init__(self, settings: BrokerSettings, name: str | None = None) -> None:
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=name or f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        settings.configure(self.c)
        self.connack: str | None = None
        self.suback: dict[int, list[str]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._ready = threading.Event()
        self._acked = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        host, port = settings.address
        try:
            self.c.connect(host, port, keepalive=10)
        except OSError as e:  # TLS refused before MQTT
            self.connack = f"no connection: {e}"
            return
        self.c.loop_start()
        self._ready.wait(10)  # no CONNACK: the broker closed the connection (connack None)

    def _on_connect(self, c: Any, u: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connack = str(reason)
        self._ready.set()

    def _on_subscribe(self, c: Any, u: Any, mid: int, codes: Any, props: Any) -> None:
        with self._acked:
            self.suback[mid] = [str(x) for x in codes]
            self._acked.notify_all()

    def subscribe(self, topic: str) -> str:
        _, mid = self.c.subscribe(topic, qos=1)
        with self._acked:
            assert self._acked.wait_for(lambda: mid in self.suback, 10)
        return self.suback[mid][0]

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def status(device: str) -> bytes:
    return wire.encode(wire.Status(device=device, boot="b", seq=1, sent=time.time(), online=True))


def received(watcher: Client, topic: str, payload: bytes, wait: float = 1.5) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if (topic, payload) in watcher.messages:
            return True
        time.sleep(0.05)
    return False


def test_connections_need_tls_and_a_known_identity(broker: FleetBroker, tmp_path: Path) -> None:
    ok = Client(broker.settings("dev-1"))
    assert ok.connack == "Success"
    ok.close()
    for settings in (
        broker.settings("dev-1", password="wrong"),
        BrokerSettings(broker.url(), username="nobody", password="x", ca=broker.ca.cert),
        BrokerSettings(broker.url(), ca=broker.ca.cert),  # anonymous
    ):
        refused = Client(settings)
        assert refused.connack == "Not authorized", settings.describe()
        refused.close()
    # a client that does not trust the fleet's CA never gets to the credentials
    other = make_test_pki(tmp_path / "other")
    problem = probe(BrokerSettings(broker.url(), ca=other.ca))
    assert problem is not None and "not trusted" in problem
    # the mTLS listener refuses a certificate from another CA
    stranger = BrokerSettings(
        broker.url(mtls=True), ca=broker.ca.cert, cert=other.client_cert, key=other.client_key
    )
    refused = Client(stranger)
    assert refused.connack != "Success"
    refused.close()


@pytest.mark.parametrize("listener", ["password", "certificate"])
def test_a_device_publishes_and_reads_only_its_own_topics(
    broker: FleetBroker, listener: str
) -> None:
    def as_device(name: str) -> Client:
        if listener == "password":
            return Client(broker.settings(name))
        return Client(broker.mtls_settings(name))

    service = Client(broker.settings(SERVICE_ACCOUNT))
    for kind in ("status", "telemetry", "events"):
        assert service.subscribe(topics.device_filter(FLEET, kind=kind)) == "Granted QoS 1"
    assert service.subscribe(f"edgeops/v1/{FLEET}/+/cmd") == "Granted QoS 1"
    me = as_device("dev-1")
    try:
        # its own presence, telemetry and events arrive
        for topic in (
            topics.status(FLEET, "dev-1"),
            topics.telemetry(FLEET, "dev-1"),
            topics.events(FLEET, "dev-1"),
        ):
            body = f"{topic} {uuid.uuid4()}".encode()
            me.publish(topic, body)
            assert received(service, topic, body), topic
        # as another device, or a command (to itself or another), nothing arrives
        for topic in (
            topics.status(FLEET, "dev-2"),
            topics.telemetry(FLEET, "dev-2"),
            topics.events(FLEET, "dev-2"),
            topics.cmd(FLEET, "dev-2"),
            topics.cmd(FLEET, "dev-1"),
        ):
            body = f"forged {uuid.uuid4()}".encode()
            me.publish(topic, body)
            assert not received(service, topic, body, wait=0.5), topic
        # it reads its own commands and alerts, not another's, and not the fleet's telemetry
        # (mosquitto 2.0 grants such a subscription and withholds every message at delivery)
        assert me.subscribe(topics.cmd(FLEET, "dev-1")) == "Granted QoS 1"
        assert me.subscribe(topics.alert(FLEET, "dev-1")) == "Granted QoS 1"
        for filt in (topics.device_filter(FLEET, kind="telemetry"), "edgeops/#"):
            me.subscribe(filt)
        other = Client(broker.settings("dev-2"))
        for topic in (topics.cmd(FLEET, "dev-2"), topics.alert(FLEET, "dev-2")):
            assert other.subscribe(topic) == "Granted QoS 1"
            body = f"not for dev-1 {uuid.uuid4()}".encode()
            service.publish(topic, body)
            assert received(other, topic, body), topic
            assert not received(me, topic, body, wait=0.5), topic
        body = f"dev-2's telemetry {uuid.uuid4()}".encode()
        other.publish(topics.telemetry(FLEET, "dev-2"), body)
        assert received(service, topics.telemetry(FLEET, "dev-2"), body)
        assert not received(me, topics.telemetry(FLEET, "dev-2"), body, wait=0.5)
        other.close()
        # a device cannot publish alerts either
        watcher = Client(broker.settings(SERVICE_ACCOUNT))
        assert watcher.subscribe(f"edgeops/v1/{FLEET}/alerts/+") == "Granted QoS 1"
        forged = f"forged alert {uuid.uuid4()}".encode()
        me.publish(topics.alert(FLEET, "dev-1"), forged)
        assert not received(watcher, topics.alert(FLEET, "dev-1"), forged, wait=0.5)
        watcher.close()
        # the service's commands and alerts reach the device
        cmd = f"command {uuid.uuid4()}".encode()
        service.publish(topics.cmd(FLEET, "dev-1"), cmd)
        assert received(me, topics.cmd(FLEET, "dev-1"), cmd)
        alert = f"alert {uuid.uuid4()}".encode()
        service.publish(topics.alert(FLEET, "dev-1"), alert)
        assert received(me, topics.alert(FLEET, "dev-1"), alert)
    finally:
        me.close()
        service.close()


def test_the_service_shares_its_subscription_under_the_acl(broker: FleetBroker) -> None:
    group = f"g{uuid.uuid4().hex[:6]}"
    one, two = Client(broker.settings(SERVICE_ACCOUNT)), Client(broker.settings(SERVICE_ACCOUNT))
    for c in (one, two):
        filt = topics.shared(group, topics.device_filter(FLEET, kind="telemetry"))
        assert c.subscribe(filt) == "Granted QoS 1"
    device = Client(broker.settings("dev-2"))
    sent = [f"w{i}".encode() for i in range(20)]
    for body in sent:
        device.publish(topics.telemetry(FLEET, "dev-2"), body)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(one.messages) + len(two.messages) < len(sent):
        time.sleep(0.05)
    got = sorted(p for _, p in one.messages + two.messages)
    assert got == sorted(sent)  # every message once, split between the two
    assert one.messages and two.messages
    for c in (one, two, device):
        c.close()


# --- the service and the simulator over the secured broker -------------------------------------


@pytest.mark.parametrize("identity", ["password", "certificate"])
def test_the_service_and_a_simulated_fleet_run_over_tls(
    identity: str,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from edgeops.service.config import ServiceConfig
    from edgeops.service.server import Service
    from edgeops.simulate import Fleet, FleetConfig

    ids = FleetConfig(devices=3, bundle=digits_bundles[0], prefix="sec").device_ids()
    accounts = {d: uuid.uuid4().hex for d in ids}
    creds = tmp_path / "creds"
    creds.mkdir()
    with FleetBroker(tmp_path / "broker", accounts) as b:
        if identity == "password":
            (creds / "passwords").write_text("".join(f"{d}:{p}\n" for d, p in accounts.items()))
            service_side = b.settings(SERVICE_ACCOUNT)
            devices_side = BrokerSettings(b.url(), ca=b.ca.cert)
        else:
            for d in ids:
                cert = b.issue(d)
                cert.cert.rename(creds / f"{d}.crt")
                cert.key.rename(creds / f"{d}.key")
            service_side = b.mtls_settings(SERVICE_ACCOUNT)
            devices_side = BrokerSettings(b.url(mtls=True), ca=b.ca.cert)
        cfg = ServiceConfig(
            broker=service_side,
            db=f"sqlite:///{tmp_path / 'service.db'}",
            http_port=0,
            group=f"g{uuid.uuid4().hex[:6]}",
            bundles=(digits_bundles[0],),
            trusted_keys=(signing_keys[1],),
            fleet_interval=3600.0,
        )
        fleet_cfg = FleetConfig(
            devices=3,
            bundle=digits_bundles[0],
            broker=devices_side,
            device_credentials=creds,
            fleet=FLEET,
            prefix="sec",
            rate=20.0,
            window_seconds=0.5,
            trusted_keys=(signing_keys[1],),
        )
        with Service(cfg, http=False) as service:
            service.wait_connected(15)
            assert service.connected.is_set(), service.broker_problem
            with Fleet(fleet_cfg) as fleet:
                assert fleet.online == 3, fleet.connect_problem
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    seen = {r["device"] for r in service.store.devices.all(FLEET)}
                    if seen >= set(ids) and service.counters.stored_windows >= 6:
                        break
                    time.sleep(0.2)
                assert {r["device"] for r in service.store.devices.all(FLEET)} >= set(ids)
                assert service.counters.stored_windows >= 6
                assert sum(service.counters.rejected.values()) == 0


def test_a_device_with_another_devices_password_is_refused(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    from edgeops.simulate import Fleet, FleetConfig

    with FleetBroker(tmp_path / "broker", {"imp-000": "right"}) as b:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "passwords").write_text("imp-000:wrong\n")
        cfg = FleetConfig(
            devices=1,
            bundle=digits_bundles[0],
            broker=BrokerSettings(b.url(), ca=b.ca.cert),
            device_credentials=creds,
            fleet=FLEET,
            prefix="imp",
            trusted_keys=(signing_keys[1],),
        )
        with Fleet(cfg) as fleet:
            assert fleet.online == 0
            assert fleet.connect_problem is not None
            assert "Not authorized" in fleet.connect_problem
