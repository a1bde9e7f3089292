"""The central service with real agents, a real mosquitto and a real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_agent.agent import Agent
from edgeops.core import topics, wire
from edgeops.core.errors import AccessDenied
from edgeops.service.config import ServiceConfig
from edgeops.service.server import Service
from edgeops.testing import Mosquitto, Postgres, until
from tests.test_agent import FLEET, make_config


@pytest.fixture(scope="module")
def digits_images() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().images.astype(np.float32)


@pytest.fixture(scope="module")
def bundles(digits_bundles: tuple[Path, Path]) -> tuple[Path, Path]:
    return digits_bundles


def service_config(tmp: Path, port: int, bundle: Path, keys, **kw) -> ServiceConfig:  # type: ignore[no-untyped-def]
    return ServiceConfig(
        broker=f"mqtt://127.0.0.1:{port}",
        db=kw.pop("db", f"sqlite:///{tmp / 'service.db'}"),
        group=kw.pop("group", f"g{uuid.uuid4().hex[:6]}"),
        http_port=0,
        bundles=(bundle,),
        trusted_keys=(keys[1],),
        fleet_interval=kw.pop("fleet_interval", 3600.0),
        **kw,
    )


def _serve_windows(
    agent: Agent, images: np.ndarray, n: int, rng: np.random.Generator, shift: float = 0.0
) -> None:
    for _ in range(n):
        x = images[rng.integers(0, len(images), 600)]
        if shift:
            x = np.clip(x + shift, 0, 16)
        agent.predict(x)
        agent.flush_window()


def test_drifted_devices_alert_and_the_others_do_not(
    broker: Mosquitto, bundles, signing_keys, digits_images, tmp_path: Path, cli
) -> None:  # type: ignore[no-untyped-def]
    cfg = service_config(tmp_path, broker.port, bundles[0], signing_keys)
    rng = np.random.default_rng(0)
    names = [f"calm-{i}-{uuid.uuid4().hex[:4]}" for i in range(2)] + [
        f"drift-{uuid.uuid4().hex[:4]}"
    ]
    with Service(cfg) as service:
        assert service.connected.wait(10)
        agents = [
            Agent(
                make_config(
                    tmp_path / n, broker.port, bundles[0], signing_keys, device=n, window=3600
                ),
                http=False,
            ).start()
            for n in names
        ]
        try:
            for a in agents:
                assert a.link is not None and a.link.wait_connected(10)
            for a in agents:
                _serve_windows(a, digits_images, 3, rng)  # three calm windows each
            assert until(lambda: service.counters.stored_windows >= 9)
            assert service.store.alerts.active() == []
            drifted = agents[2]
            _serve_windows(drifted, digits_images, 2, rng, shift=5.0)  # drift: two windows
            for a in agents[:2]:
                _serve_windows(a, digits_images, 2, rng)
            assert until(lambda: service.counters.stored_windows >= 15)
            alerts = service.store.alerts.active()
            assert {a["device"] for a in alerts} == {names[2]}, alerts
            features = {(a["kind"], a["feature"]) for a in alerts}
            assert ("input", "image:mean[c0]") in features
            assert ("dataset", "*") in features
            # Distances are stored for every device, alert or not.
            calm = service.store.drift.rows(device=names[0])
            assert calm and all(r["drifted"] in (False, None) for r in calm if r["kind"] == "input")
            # The retained alert message is on the broker.
            got: list[wire.Alert] = []
            c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            c.on_message = lambda cl, u, m: got.append(wire.decode(m.payload, wire.Alert))
            c.connect("127.0.0.1", broker.port)
            c.subscribe(topics.alert(FLEET, names[2]), qos=1)
            c.loop_start()
            assert until(lambda: bool(got), 10)
            c.disconnect()
            c.loop_stop()
            assert {a.feature for a in got[-1].alerts} >= {"image:mean[c0]"}
            # Back to normal: the alert clears after K calm windows.
            _serve_windows(drifted, digits_images, 3, rng)
            assert until(lambda: service.store.alerts.active(device=names[2]) == [], 15)
            # The CLI reads it all through the REST API, with a read token.
            url = service.http.address
            assert cli("fleet", "status", "--url", url).code == AccessDenied.exit_code
            api = ("--url", url, "--token", service.tokens.create("reader", "read"))
            r = cli("fleet", "status", *api)
            assert r.code == 0 and all(n in r.out for n in names)
            r = cli("fleet", "device", names[2], *api)
            assert r.code == 0 and "p95" in r.out and "image:mean[c0]" in r.out
            r = cli("drift", "report", "--model", "digits", "--since", "1h", *api, "--json")
            assert r.code == 0 and '"js"' in r.out and '"checks"' in r.out
            r = cli("drift", "report", "--model", "digits", *api)
            assert r.code == 0 and "why:" in r.out and "training data" in r.out
            assert "threshold" in r.out and "floor" in r.out
        finally:
            for a in agents:
                a.stop()


def test_bad_and_duplicate_messages_are_counted_not_stored(
    broker: Mosquitto, bundles, signing_keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    cfg = service_config(tmp_path, broker.port, bundles[0], signing_keys)
    dev = f"dup-{uuid.uuid4().hex[:4]}"
    with Service(cfg, http=False) as service:
        agent = Agent(
            make_config(tmp_path / "a", broker.port, bundles[0], signing_keys, device=dev),
            mqtt=False,
            http=False,
        ).start()
        agent.predict(np.zeros((3, 8, 8)))
        window = agent.flush_window()
        agent.stop()
        assert window is not None
        good = wire.encode(window)
        topic = topics.telemetry(FLEET, dev)
        service.handle(topic, good)
        service.handle(topic, good)  # a QoS 1 redelivery
        service.handle(topic, b"\xff\x00 not json")
        this = f'"schema":"{wire.SCHEMA_VERSION}"'.encode()
        service.handle(topic, good.replace(this, b'"schema":"7.0"'))
        service.handle(topic, b"{" + b" " * (wire.MAX_PAYLOAD_BYTES + 1) + b"}")
        service.handle(topics.telemetry(FLEET, "someone-else"), good)  # device != topic
        service.handle("edgeops/v1/x", good)
        c = service.counters
        assert c.stored_windows == 1 and c.duplicates == 1 and c.rejected["topic"] == 2
        assert c.rejected["not json"] == 1 and c.rejected["unknown major version"] == 1
        assert c.rejected["oversized"] == 1
        from edgeops.service.storage import schema

        assert service.store.count_rows(schema.windows) == 1
        # every refused message is kept with its reason, and none of them as a window
        dead = service.store.telemetry.dead_letters()
        assert sorted(d["reason"] for d in dead) == sorted(
            ["not json", "unknown major version", "oversized", "topic", "topic"]
        )
        big = next(d for d in dead if d["reason"] == "oversized")
        assert big["size"] == wire.MAX_PAYLOAD_BYTES + 3 and len(big["payload"]) == 16 * 1024


@pytest.mark.slow
def test_two_services_share_the_load_with_postgresql_and_ride_out_a_database_outage(
    broker: Mosquitto, bundles, signing_keys, digits_images, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    with Postgres() as pg:
        cfg = service_config(tmp_path, broker.port, bundles[0], signing_keys, db=pg.url)
        with Service(cfg, http=False) as one, Service(replace(cfg), http=False) as two:
            assert one.connected.wait(10) and two.connected.wait(10)
            names = [f"pg-{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
            agents = [
                Agent(
                    make_config(
                        tmp_path / n, broker.port, bundles[0], signing_keys, device=n, window=3600
                    ),
                    http=False,
                ).start()
                for n in names
            ]
            try:
                for a in agents:
                    assert a.link is not None and a.link.wait_connected(10)
                for _ in range(10):
                    for a in agents:
                        a.predict(digits_images[rng.integers(0, len(digits_images), 50)])
                        a.flush_window()
                total = lambda: one.counters.stored_windows + two.counters.stored_windows  # noqa: E731
                assert until(lambda: total() >= 40, 30)
                # The database goes away for a few seconds: the services keep the batches they
                # hold (unacked) and retry until it is back; nothing is lost or doubled.
                pg.halt()
                for _ in range(5):
                    for a in agents:
                        a.predict(digits_images[rng.integers(0, len(digits_images), 50)])
                        a.flush_window()
                time.sleep(3.0)
                pg.resume()
                assert until(lambda: total() >= 60, 60), total()
                assert one.counters.storage_retries + two.counters.storage_retries > 0
                time.sleep(1.0)
            finally:
                for a in agents:
                    a.stop()
            from edgeops.service.storage import schema

            assert total() == one.store.count_rows(schema.windows) == 60 + 4  # 15 each + final
            assert one.counters.stored_windows > 0 and two.counters.stored_windows > 0
            assert one.counters.duplicates + two.counters.duplicates == 0
