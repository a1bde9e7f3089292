"""Prometheus metrics: a real service (uvicorn on a free port, a real mosquitto) and a real agent
(its local API on a free port) scraped over HTTP and parsed with prometheus-client's own parser;
the counts must be what happened, and every metric the shipped Grafana dashboard queries must be
among them."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from device_agent.agent import Agent
from edgeops.core import topics
from edgeops.core.errors import InputDataError
from edgeops.service.server import Service
from edgeops.testing import Mosquitto, until
from tests.test_agent import FLEET, make_config
from tests.test_service import service_config

GRAFANA = Path(__file__).parent.parent / "deploy" / "grafana" / "edgeops-fleet.json"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, token: str | None = None) -> tuple[str, Samples]:
    """The content type and every sample of ``url``, keyed by (name, sorted labels)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        kind = r.headers["Content-Type"]
        text = r.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return kind, out


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def test_service_and_agent_metrics_count_what_happened_and_cover_the_grafana_dashboard(
    broker: Mosquitto,
    digits_bundles: tuple[Path, Path],
    signing_keys: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.float32)
    device = f"prom-{uuid.uuid4().hex[:6]}"
    cfg = service_config(tmp_path, broker.port, digits_bundles[0], signing_keys)
    with Service(cfg) as service:
        assert service.connected.wait(10)
        token = service.tokens.create("prometheus", "read")
        url = f"{service.http.address}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            scrape(url)
        assert refused.value.code == 401

        agent_cfg = make_config(
            tmp_path / "agent", broker.port, digits_bundles[0], signing_keys, device=device,
            window=3600, http=True,
        )  # fmt: skip
        with Agent(agent_cfg) as agent:
            calls = 0
            for n in (1, 30, 200):  # one sample, then batches: each sample counts
                agent.predict(images[:n])
                calls += 1
            with pytest.raises(InputDataError):
                agent.predict([[1.0, 2.0]])  # the wrong shape
            agent.flush_window()
            agent.predict(images[:5])
            calls += 1
            agent.flush_window()

            # a payload that is not JSON on a device's telemetry topic: refused, counted
            c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
            c.connect("127.0.0.1", broker.port)
            c.loop_start()
            c.publish(topics.telemetry(FLEET, device), b"{not json", qos=1).wait_for_publish()
            c.loop_stop()
            c.disconnect()

            def stored() -> Samples:
                return scrape(url, token)[1]

            assert until(
                lambda: (
                    value(stored(), "edgeops_messages_stored_total", kind="window") >= 2
                    and value(stored(), "edgeops_messages_rejected_total", reason="not json") >= 1
                )
            )
            kind, svc = scrape(url, token)
            assert kind.startswith("text/plain; version=0.0.4")
            assert value(svc, "edgeops_messages_stored_total", kind="window") == 2
            assert value(svc, "edgeops_messages_stored_total", kind="status") >= 1
            assert value(svc, "edgeops_messages_rejected_total", reason="not json") == 1
            assert value(svc, "edgeops_messages_rejected_total", reason="clock") == 0
            assert value(svc, "edgeops_messages_received_total") >= 4
            assert value(svc, "edgeops_devices", fleet=FLEET, presence="online") >= 1
            assert value(svc, "edgeops_deployments", state="running") == 0
            assert value(svc, "edgeops_alerts_active", fleet=FLEET, kind="input") == 0
            assert value(svc, "edgeops_broker_connected") == 1
            assert value(svc, "edgeops_intake_queue_messages") == 0
            evaluations = value(svc, "edgeops_evaluations_total")
            assert value(svc, "edgeops_evaluation_duration_seconds_count") == evaluations
            assert (
                value(svc, "edgeops_evaluation_duration_seconds_bucket", le="+Inf") == evaluations
            )

            agent_url = f"{agent.http.address}/metrics"
            kind, dev = scrape(agent_url)
            assert kind.startswith("text/plain; version=0.0.4")
            assert value(dev, "edgeops_agent_predictions_total") == 1 + 30 + 200 + 5
            assert value(dev, "edgeops_agent_bad_inputs_total") == 1
            assert value(dev, "edgeops_agent_errors_total") == 0
            assert value(dev, "edgeops_agent_prediction_latency_seconds_count") == calls
            assert value(dev, "edgeops_agent_prediction_latency_seconds_sum") > 0
            ref = agent.model.ref if agent.model is not None else None
            assert ref is not None
            assert value(
                dev, "edgeops_agent_model_info",
                name=ref.name, version=ref.version, sha256=ref.sha256 or "",
            ) == 1  # fmt: skip
            assert value(dev, "edgeops_agent_update_state", state="idle") == 1
            assert value(dev, "edgeops_agent_update_state", state="health") == 0
            assert value(dev, "edgeops_agent_mqtt_connected") == 1
            assert value(dev, "edgeops_agent_outbox_pending") >= 0
            assert value(dev, "edgeops_agent_outbox_dropped_total") == 0

    exposed = {name for name, _ in svc} | {name for name, _ in dev}
    queried = grafana_metrics()
    assert len(queried) >= 20
    assert queried <= exposed, sorted(queried - exposed)


def grafana_metrics() -> set[str]:
    """Every metric name the Grafana dashboard's queries use."""
    doc = json.loads(GRAFANA.read_text())
    exprs = [
        t["expr"]
        for p in doc["panels"]
        for t in p.get("targets", [])
    ]  # fmt: skip
    assert exprs and all(isinstance(e, str) for e in exprs)
    return {m for e in exprs for m in re.findall(r"\bedgeops_[a-z0-9_]+", e)}


def test_two_agents_in_one_process_keep_their_own_counts(
    digits_bundles: tuple[Path, Path], signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """The simulator runs many agents in one process: each has a registry of its own."""
    agents = [
        Agent(make_config(tmp_path / str(i), 1, digits_bundles[0], signing_keys), mqtt=False)
        for i in range(2)
    ]
    for a in agents:
        a.start()
    try:
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32)
        agents[0].predict(images[:7])
        texts = [a.metrics.exposition().decode() for a in agents]
    finally:
        for a in agents:
            a.stop()
    assert "edgeops_agent_predictions_total 7.0" in texts[0]
    assert "edgeops_agent_predictions_total 0.0" in texts[1]
